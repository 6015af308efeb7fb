"""A unit module for the systemctl stand-in test (loaded through HERD_SANDBOX_UNIT_MODULES)."""

from herd_sandbox.systemctl import ExecUnit, register

register(ExecUnit(name="sleeper.service", binary="sleep", env_file="/etc/sleeper.env", args=("300",),
                  stop_timeout_s=5))
