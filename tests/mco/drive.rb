#!/usr/bin/ruby
# drive.rb - push MCollective RPC requests through the real geats agent with
# no middleware: MCollective's own DDL validation, RPC::Agent#handlemsg,
# implemented_by, ActionRunner and systemu all run, as in mcollectived.
#
#   ruby drive.rb LIBDIR < requests.json
#
# stdin: a JSON array of [action, data] pairs. For each, prints one line
# {"statuscode":..,"statusmsg":..,"data":{..}} on stdout. MCollective's own
# log goes to stderr. Like `mco rpc`, top-level data keys become Symbols and
# :process_results => true is added, unless the pair has a third element
# {"string_keys": true} (a JSON client).
#
# Environment: GEATS_COMMAND becomes plugin.geats.command. Everything else
# (GEATS_ROOT, GEATS_CONFIG) reaches the geats binary because MCollective
# passes the daemon's whole environment to implemented_by commands.
require "json"
require "tmpdir"
require "timeout"
require "securerandom"
require "mcollective"

libdir = ARGV[0] or abort("usage: ruby drive.rb LIBDIR < requests.json")
libdir = File.expand_path(libdir)
requests = JSON.parse($stdin.read)

Dir.mktmpdir("geats-drive") do |dir|
  cfg = File.join(dir, "server.cfg")
  lines = [
    "libdir = #{libdir}",
    "identity = drive.node",
    "logger_type = console",
    "loglevel = warn",
    "color = 0",
    "connector = rabbitmq",   # loaded, never connected
    "securityprovider = psk",
    "plugin.psk = unset",
    "factsource = yaml",
    "plugin.yaml = #{File.join(dir, 'facts.yaml')}",
  ]
  lines << "plugin.geats.command = #{ENV['GEATS_COMMAND']}" if ENV["GEATS_COMMAND"]
  File.write(cfg, lines.join("\n") + "\n")
  File.write(File.join(dir, "facts.yaml"), "--- {}\n")

  config = MCollective::Config.instance
  config.loadconfig(cfg)
  config.instance_variable_set(:@mode, :server)
  MCollective::PluginManager.loadclass("MCollective::Agent::Geats")

  requests.each do |action, data, opts|
    opts ||= {}
    data = data.map { |k, v| [k.to_sym, v] }.to_h unless opts["string_keys"]
    data[opts["string_keys"] ? "process_results" : :process_results] = true
    agent = MCollective::Agent::Geats.new   # a new instance per request, as PluginManager does
    msg = {
      :body       => {:agent => "geats", :action => action, :caller => "cert=drive", :data => data},
      :senderid   => "drive.client",
      :requestid  => SecureRandom.hex(16),
      :callerid   => "cert=drive",
      :collective => "mcollective",
      :msgtime    => Time.now.to_i,
      :ttl        => 60,
      :filter     => MCollective::Util.empty_filter,
    }
    begin
      reply = Timeout.timeout(agent.timeout) { agent.handlemsg(msg, nil) }
      puts JSON.generate(:statuscode => reply[:statuscode], :statusmsg => reply[:statusmsg], :data => reply[:data])
    rescue Timeout::Error
      puts JSON.generate(:statuscode => nil, :statusmsg => "timeout after #{agent.timeout}s", :data => nil)
    end
    $stdout.flush
  end
end
