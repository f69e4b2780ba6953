-- POST /v1/auth/refresh with rotation. Run with as many threads as connections, so each
-- connection has its own Lua state and follows its own refresh chain: it starts from one
-- token of the file named by BENCH_TOKENS (one line per connection, each from its own
-- login) and presents each returned refresh token exactly once, in order.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

local tokens = read_lines("BENCH_TOKENS")
local threads = 0
local headers = {["Content-Type"] = "application/json"}

function setup(thread)
  threads = threads + 1
  if threads > #tokens then
    error("refresh.lua: more threads than tokens; a chain must not be shared")
  end
  thread:set("token", tokens[threads])
end

function request()
  return wrk.format("POST", "/v1/auth/refresh", headers, '{"refresh_token":"' .. token .. '"}')
end

function response(status, hdrs, body)
  if status == 200 then
    -- A broken chain keeps its last token: every later request is a counted 401.
    token = body:match('"refresh_token"%s*:%s*"([^"]+)"') or token
  end
end
