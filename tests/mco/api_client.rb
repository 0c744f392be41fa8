#!/usr/bin/ruby
# api_client.rb - calls through MCollective's Ruby RPC client API, the way a
# controller's driver does: one rpcclient per call, from the config in
# $HOME/.mcollective, progress off, the call's own timeout, an identity
# filter for node1.test, string-keyed arguments, and the results of every
# replying node as plain hashes.
#
#   ruby api_client.rb < calls.json
#
# stdin: a JSON array of [action, arguments, timeout]. For each call, prints
# one line {"results": [...], "seconds": S}, where S is the time spent
# waiting for the replies (request published to replies in).
require "json"
require "mcollective"

include MCollective::RPC

JSON.parse($stdin.read).each do |action, arguments, timeout|
  client = rpcclient("geats", :exit_on_failure => false)
  client.progress = false
  client.timeout = timeout
  client.identity_filter("node1.test")
  started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  results = client.send(action, arguments).map(&:results)
  seconds = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
  client.disconnect
  puts JSON.generate("results" => results, "seconds" => seconds)
  $stdout.flush
end
