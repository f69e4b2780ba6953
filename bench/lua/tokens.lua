-- GET with a different access token on each request: each thread cycles through all the
-- tokens of the file named by BENCH_TOKENS (one per line), from its own starting point, so
-- that consecutive requests of the run name different sessions.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

local tokens = read_lines("BENCH_TOKENS")
local threads = 0

function setup(thread)
  thread:set("thread_no", threads)
  threads = threads + 1
end

function init(args)
  next_token = (thread_no * 7919) % #tokens
end

function request()
  next_token = next_token % #tokens + 1
  return wrk.format(nil, nil, {Authorization = "Bearer " .. tokens[next_token]})
end
