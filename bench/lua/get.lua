-- GET with one fixed header per wrk thread, taken from the file named by BENCH_HEADERS
-- (lines "Name: value", e.g. an Authorization or Cookie header); none without it.
-- No request() function: wrk builds each thread's request once, the cheapest load.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

local headers = read_lines("BENCH_HEADERS")
local threads = 0

function setup(thread)
  if #headers > 0 then
    thread:set("header_line", headers[threads % #headers + 1])
  end
  threads = threads + 1
end

function init(args)
  if header_line then
    local name, value = header_line:match("^([^:]+):%s*(.*)$")
    wrk.headers[name] = value
  end
end
