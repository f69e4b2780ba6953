-- POST /v1/auth/login, cycling through the accounts in the file named by BENCH_USERS
-- (lines "email password"). Each request comes from another client address in
-- X-Forwarded-For (authsvc trusts 127.0.0.1 as a proxy in the benchmark), so the
-- per-address login limit counts as it would for many clients behind a proxy.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

local users = read_lines("BENCH_USERS")
local threads = 0
local sent = 0
local headers = {["Content-Type"] = "application/json", ["User-Agent"] = "authsvc-bench/1"}

function setup(thread)
  thread:set("offset", threads)
  threads = threads + 1
end

function init(args)
  math.randomseed(os.time() + offset * 7919)
end

function request()
  sent = sent + 1
  local email, password = users[(offset + sent) % #users + 1]:match("^(%S+) (%S+)$")
  headers["X-Forwarded-For"] = string.format(
    "10.%d.%d.%d", math.random(0, 255), math.random(0, 255), math.random(1, 254))
  local body = '{"email":"' .. email .. '","password":"' .. password .. '"}'
  return wrk.format("POST", "/v1/auth/login", headers, body)
end
