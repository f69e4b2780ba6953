-- Shared by the wrk scripts: helpers, and done(), which prints one machine-readable line
--   BENCH_JSON {"requests": N, "duration_us": N, "errors": {...}, "latency_us": {...}}
-- that bench/wrk.py parses. Latency percentiles come from wrk's own histogram.
local percentiles = {50, 75, 90, 95, 99, 99.9}

-- The lines of the file named by environment variable `var` (an empty table without it).
function read_lines(var)
  local path = os.getenv(var)
  local lines = {}
  if path and path ~= "" then
    for line in io.lines(path) do
      if line ~= "" then lines[#lines + 1] = line end
    end
  end
  return lines
end

function done(summary, latency, requests)
  local parts = {}
  for _, p in ipairs(percentiles) do
    parts[#parts + 1] = string.format('"%s": %d', tostring(p), latency:percentile(p))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, '
      .. '"write": %d, "status": %d, "timeout": %d}, "latency_us": {%s}, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(parts, ", "), latency.max))
end
