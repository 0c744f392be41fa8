# ddl_check.rb LIBDIR - load <LIBDIR>/mcollective/agent/geats.ddl with
# MCollective's own DDL loader and print what it understood as JSON.
require "json"
require "mcollective"

libdir = File.expand_path(ARGV[0] || abort("usage: ruby ddl_check.rb LIBDIR"))
$LOAD_PATH.unshift(libdir)              # Config#libdir is $LOAD_PATH
ddl = MCollective::DDL.new("geats", :agent)
out = {
  "file" => ddl.findddlfile,
  "meta" => ddl.meta,
  "actions" => ddl.actions.map do |a|
    i = ddl.action_interface(a)
    {"action" => a, "input" => i[:input], "output" => i[:output].keys, "aggregate" => i[:aggregate], "display" => i[:display]}
  end,
}
checks = {}
begin
  ddl.validate_rpc_request("start", {:vm_name => "web1"})
  checks["start web1"] = "ok"
rescue MCollective::DDLValidationError => e
  checks["start web1"] = e.message
end
[["start", {}], ["start", {:vm_name => "bad name"}], ["start", {:vm_name => "a" * 64}], ["define", {:vm_name => "web1"}]].each do |action, data|
  begin
    ddl.validate_rpc_request(action, data)
    checks["#{action} #{data.inspect}"] = "ok"
  rescue MCollective::DDLValidationError => e
    checks["#{action} #{data.inspect}"] = e.message
  end
end
out["checks"] = checks
puts JSON.generate(out)
