"""SIGTERM/SIGINT through the real train.py: every process stops at one
agreed step with exactly one checkpoint for it, exits 0, and the resumed run
ends with the parameters of an uninterrupted one, bit for bit.

Signals go to processes this test started, by pid, once their log shows a
training step; every run is bounded in time.
"""

import re
import signal
import socket

import numpy as np
import pytest
from cli_runs import (checkpoint_steps, cli_env, final_params, run, start,
                      stop, tiny_args, wait_for)

STEPS = 24


def _args(tmp, **extra):
  extra.setdefault("eval_at_end", False)
  return tiny_args(tmp, STEPS, **extra)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The parameters of an uninterrupted run."""
  tmp = tmp_path_factory.mktemp("reference")
  run("train.py", tmp / "run", _args(tmp, checkpoint_every_steps=1000))
  step, params = final_params(tmp / "run")
  assert step == STEPS
  return params


def _logged_step(log_path, step):
  return lambda: re.search(rf"^\S+ .*\] \[{step}\] ", log_path.read_text(),
                           re.M) is not None


def _stopped_at(log_text):
  found = re.findall(r"Stopped at step (\d+)", log_text)
  assert len(found) == 1, log_text[-3000:]
  return int(found[0])


def _signal_mid_run(tmp_path, sig, every):
  workdir, log = tmp_path / "run", tmp_path / "train.log"
  args = _args(tmp_path, checkpoint_every_steps=every)
  proc = start("train.py", workdir, args, log)
  try:
    wait_for(_logged_step(log, 3), [proc], "training step 3")
    proc.send_signal(sig)
    rc = proc.wait(timeout=300)
  finally:
    stop([proc])
  text = log.read_text()
  assert rc == 0, text[-3000:]
  assert "StepAlreadyExists" not in text and "Traceback" not in text
  stopped = _stopped_at(text)
  assert 3 <= stopped < STEPS
  steps = checkpoint_steps(workdir)
  assert steps[-1] == stopped  # Exactly this step, saved once.
  assert not [p for p in (workdir / "checkpoints").iterdir()
              if "tmp" in p.name]
  return workdir, args, stopped, steps


@pytest.mark.slow
def test_sigterm_on_a_save_step_saves_once_exits_0_and_resumes_bitwise(
    tmp_path, reference):
  # Every step is a save step: the stop step is one too.
  workdir, args, stopped, steps = _signal_mid_run(tmp_path, signal.SIGTERM, 1)
  assert steps == list(range(stopped - 2, stopped + 1))  # keep_checkpoints=3
  proc = run("train.py", workdir, args)
  assert f"Resumed from {workdir / 'checkpoints'} at step {stopped}" in proc.stderr
  step, params = final_params(workdir)
  assert step == STEPS
  for name, value in reference.items():
    np.testing.assert_array_equal(params[name], value, err_msg=name)


@pytest.mark.slow
def test_sigint_on_a_non_save_step_saves_it_and_resumes_bitwise(
    tmp_path, reference):
  workdir, args, stopped, steps = _signal_mid_run(tmp_path, signal.SIGINT, 1000)
  assert steps == [stopped]
  run("train.py", workdir, args)
  step, params = final_params(workdir)
  assert step == STEPS
  for name, value in reference.items():
    np.testing.assert_array_equal(params[name], value, err_msg=name)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(
    tmp_path, reference):
  del reference  # Only to make the synthetic data first (shared folder).
  workdir = tmp_path / "run"
  args = _args(tmp_path, checkpoint_every_steps=1000, stop_check_every_steps=2)
  port = _free_port()
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  procs = [start("train.py", workdir, args, logs[i], env=cli_env(
      JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
      JAX_PROCESS_ID=str(i))) for i in range(2)]
  try:
    wait_for(_logged_step(logs[1], 3), procs, "training step 3")
    procs[1].send_signal(signal.SIGTERM)
    rcs = [p.wait(timeout=300) for p in procs]
  finally:
    stop(procs)
  texts = [log.read_text() for log in logs]
  assert "Process 1 of 2" in texts[1]
  assert rcs == [0, 0], [t[-3000:] for t in texts]
  stopped = [_stopped_at(t) for t in texts]
  assert stopped[0] == stopped[1] and stopped[0] % 2 == 0, stopped
  assert "a signal to another process" in texts[0]
  assert checkpoint_steps(workdir) == [stopped[0]]
