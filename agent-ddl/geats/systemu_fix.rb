# fix.rb - make MCollective 2.12 implemented_by / RPC::Agent#run work on Ruby >= 3.0
#
# systemu 2.6.5 attaches the guard thread to the Process::Status it returns via
#   class << status; attr 'thread'; end
# inside a bare `rescue`. On Ruby 3 Process::Status ($?) is frozen, so that
# silently fails, and MCollective::Shell#runcommand then dies on
# `@status.thread.kill` (NoMethodError) AFTER the command has already run.
#
# Fix: prepend a module to SystemUniversal that remembers the guard thread
# returned by #new_thread and, if the status did not get a #thread, wraps the
# status in a SimpleDelegator that answers #thread (and everything else a
# Process::Status answers: exitstatus, success?, pid, termsig, ...).
# No MCollective file is touched; loading it twice is harmless; on Ruby 2.x it
# is a no-op (the status already responds to #thread).
#
# Load it either with `require "/path/fix.rb"` at the top of the agent .rb, or
# in mcollectived via RUBYOPT=-r/path/fix.rb.
require 'delegate'
require 'systemu'

module SystemuFrozenStatusFix
  class StatusWithThread < SimpleDelegator
    attr_reader :thread
    def initialize(status, thread)
      super(status)
      @thread = thread
    end
  end

  # stand-in when systemu was called without a block (no guard thread)
  NO_THREAD = Object.new.tap { |o| def o.kill; self; end; def o.alive?; false; end }

  def new_thread(*args)
    @__guard_thread = super
  end

  def systemu(*args)
    result = super
    status = result.is_a?(Array) ? result[0] : result
    return result if status.nil? || status.respond_to?(:thread)

    wrapped = StatusWithThread.new(status, @__guard_thread || NO_THREAD)
    if result.is_a?(Array)
      result = result.dup
      result[0] = wrapped
      result
    else
      wrapped
    end
  end
end

unless SystemUniversal.ancestors.include?(SystemuFrozenStatusFix)
  SystemUniversal.prepend(SystemuFrozenStatusFix)
end
