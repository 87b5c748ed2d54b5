-- wrk script for web_deploy.py: POSTs {"n": N} as JSON, N distinct across
-- requests (thread k sends k*1e9 + 1, + 2, ...), so a task stored twice
-- shows up as a repeated argument.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  counter = tid * 1000000000
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, '{"n":' .. counter .. '}')
end
