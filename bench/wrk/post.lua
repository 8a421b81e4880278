-- wrk script of the web benchmark (`cargo bench --bench bridge -- web`, benches/bridge.rs):
-- POSTs requests that the harness built, and counts the answers by HTTP status.
--
-- The harness authenticates and signs the requests itself (bearer token, PagerDuty's
-- X-PagerDuty-Signature computed in Rust) and writes them to a file, one request per line:
-- tab-separated header lines ("Name: value"), then, last, the compact JSON body (compact JSON
-- holds no tab). Each wrk thread cycles through the lines, starting at its own offset.
--
-- Arguments (after `--`): <requests file> [<unique header> <run id>]. With a unique header
-- (X-Webhook-Id), every request carries a value that no other request of the run has:
-- "<run id>-<thread>-<n>", like PagerDuty's one id per delivery.
--
-- done() prints one "status <code> <count>" line per status seen; the harness fails the
-- benchmark on any status it did not expect (and on socket errors, which wrk reports itself).

local threads = {}
local heads, tails = {}, {}
local n, i, seq = 0, 0, 0
local unique, prefix = nil, nil

statuses = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("id", #threads)
end

function init(args)
   local file = args[1] or error("post.lua: the requests file is missing (see the header)")
   unique = args[2]
   prefix = (args[3] or "run") .. "-" .. (id or 1) .. "-"
   local host = wrk.headers["Host"]
   for line in io.lines(file) do
      local fields = {}
      for f in line:gmatch("[^\t]+") do
         fields[#fields + 1] = f
      end
      local body = table.remove(fields)
      local head = "POST " .. wrk.path .. " HTTP/1.1\r\nHost: " .. host .. "\r\n"
      for _, h in ipairs(fields) do
         head = head .. h .. "\r\n"
      end
      head = head .. "Content-Length: " .. #body .. "\r\n"
      n = n + 1
      if unique then
         heads[n] = head .. unique .. ": " .. prefix
         tails[n] = "\r\n\r\n" .. body
      else
         heads[n] = head .. "\r\n" .. body
      end
   end
   if n == 0 then
      error("post.lua: no request in " .. file)
   end
   -- Threads start at different requests, so that they do not move in lockstep.
   i = (((id or 1) - 1) * 7919) % n
end

function request()
   i = i % n + 1
   if unique then
      seq = seq + 1
      return heads[i] .. seq .. tails[i]
   end
   return heads[i]
end

function response(status)
   statuses[status] = (statuses[status] or 0) + 1
end

function done()
   local total = {}
   for _, t in ipairs(threads) do
      for code, count in pairs(t:get("statuses")) do
         total[code] = (total[code] or 0) + count
      end
   end
   for code, count in pairs(total) do
      io.write(string.format("status %d %d\n", code, count))
   end
end
