-- wrk script for bench/http.sh: each write carries DEPTH (the script's
-- first argument, 16 by default) GET / requests, the shape of the
-- TechEmpower "plaintext" test. wrk counts the requests in the string
-- and waits for that many responses before it writes again.
init = function(args)
  local depth = tonumber(args[1]) or 16
  local one = wrk.format("GET", "/")
  request_batch = string.rep(one, depth)
end

request = function()
  return request_batch
end
