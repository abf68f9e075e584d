"""The README and docs/ against the code: links, file paths, flags, config
fields and the commands they show.

In-process checks import no TensorFlow. The commands the docs show are run
in test_the_docs_local_commands_run (the `run` fixture: slow).
"""

import ast
import functools
import os
import re
import shlex
import subprocess
import sys

from absl import flags as absl_flags

from tests.helpers import ROOT

README = os.path.join(ROOT, "README.md")
DOCS_DIR = os.path.join(ROOT, "docs")
CONFIGURATION = os.path.join(DOCS_DIR, "configuration.md")
# The two commands tests, CI (.ci/run) and users copy from the README.
TWO_COMMANDS = ("pip install -e '.[cpu]' && python -m trainer.task",
                "pip install -e '.[cpu,test]' && pytest")
# Misspellings the docs show on purpose (the error they cause).
MISSPELT_FIELDS = {"train.num_step"}
MISSPELT_PATHS = {"configs/scaeld.py"}
# Flags of other programs that docs name beside the trainer's commands.
OTHER_FLAGS = {"--help", "--helpfull", "--yes", "--logdir", "--config",
               "--repeats", "--target", "--against", "--pipeline_only",
               "--no-keras_update", "--no-streamed", "--keras_update",
               "--loops", "--steps", "--workers", "--global_batch_size",
               "--examples_per_shard", "--worker-pool-spec", "--dist",
               "--no-cache-dir", "--force", "--interval", "--seconds",
               "--deep", "--user"}


def doc_files():
  return [README] + sorted(
      os.path.join(DOCS_DIR, n) for n in os.listdir(DOCS_DIR)
      if n.endswith(".md"))


def read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def rel(path):
  return os.path.relpath(path, ROOT)


def code_blocks(text):
  return re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)


def inline_code(text):
  """Inline code spans, outside fenced blocks."""
  prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
  return re.findall(r"`([^`\n]+)`", prose)


def anchor(heading):
  """GitHub's anchor of a heading."""
  slug = heading.strip().lower()
  slug = re.sub(r"[^\w\- ]", "", slug)
  return slug.replace(" ", "-")


def anchors(path):
  text = re.sub(r"^```.*?^```", "", read(path), flags=re.S | re.M)
  return {anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


# --- (a) links ---------------------------------------------------------------


def test_every_relative_link_resolves():
  broken = []
  for path in doc_files():
    text = re.sub(r"^```.*?^```", "", read(path), flags=re.S | re.M)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
      if re.match(r"[a-z]+:", target):  # http(s):, mailto:
        continue
      file_part, _, fragment = target.partition("#")
      linked = (os.path.normpath(os.path.join(os.path.dirname(path), file_part))
                if file_part else path)
      if not os.path.exists(linked):
        broken.append(f"{rel(path)}: {target} (no such file)")
      elif fragment and linked.endswith(".md") and fragment not in anchors(linked):
        broken.append(f"{rel(path)}: {target} (no such heading)")
  assert not broken, "\n".join(broken)


# --- (b) repository paths --------------------------------------------------------

_PATH = re.compile(
    r"(?<![\w/.~$-])((?:trainer|configs|launch|tests|benchmarks|docs|\.ci)"
    r"/[\w./-]*[\w/])")


def test_every_repository_path_named_exists():
  missing = []
  for path in doc_files():
    text = read(path)
    spans = inline_code(text) + code_blocks(text)
    for span in spans:
      for name in _PATH.findall(span):
        if (os.path.exists(os.path.join(ROOT, name)) or name in MISSPELT_PATHS
            # a placeholder: configs/X.py, docs/FILE.md
            or re.fullmatch(r"[A-Z_]+", os.path.splitext(os.path.basename(name))[0])):
          continue
        missing.append(f"{rel(path)}: {name}")
  assert not missing, "\n".join(missing)
  # The file names the docs lean on are there at all.
  for name in ("LICENSE", "setup.py", "pytest.ini", ".dockerignore"):
    assert os.path.exists(os.path.join(ROOT, name))


# --- (c) flags --------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def module_flags():
  """{module: its flag names}, read from the modules' own absl definitions
  (none of the three imports TensorFlow to define its flags)."""
  import trainer.task  # pylint: disable=g-import-not-at-top,unused-import
  task = {f.name for f in absl_flags.FLAGS.get_flags_for_module("trainer.task")}
  task |= {f.name for f in absl_flags.FLAGS.get_flags_for_module("trainer.cli")}
  task.add("config")
  found = {"trainer.task": task}
  from trainer import predict  # pylint: disable=g-import-not-at-top
  from trainer.data import __main__ as data_main  # pylint: disable=g-import-not-at-top
  for name, module in (("trainer.predict", predict),
                       ("trainer.data", data_main)):
    values = absl_flags.FlagValues()

    class Defining:  # absl.flags with this FlagValues as the default
      def __getattr__(self, attr):
        value = getattr(absl_flags, attr)
        if attr.startswith("DEFINE"):
          return functools.partial(value, flag_values=values)
        return value

    original = module.flags
    module.flags = Defining()
    try:
      module.define_flags()
    finally:
      module.flags = original
    found[name] = set(values)
  absl_builtin = {"help", "helpfull", "helpshort", "helpxml", "verbosity",
                  "flagfile", "undefok", "v"}
  for names in found.values():
    names |= absl_builtin
  return found


def commands(text):
  """(module, flags) of each `python -m trainer.X ...` command in the text:
  code blocks with their continuation lines joined, and inline code."""
  lines = []
  for block in code_blocks(text):
    lines += block.replace("\\\n", " ").splitlines()
  lines += inline_code(text)
  lines += [cell for row in re.findall(r"^\|.*\|$", text, re.M)
            for cell in re.findall(r"`([^`]+)`", row)]
  found = []
  for line in lines:
    for match in re.finditer(r"python3? -m (trainer\.(?:task|predict|data))\b"
                             r"([^#|;&]*)", line):
      names = re.findall(r"(?<![\w-])--([\w.]+)", match.group(2))
      found.append((match.group(1), names))
  return found


def test_every_flag_named_exists():
  known = module_flags()
  unknown = []
  for path in doc_files():
    text = read(path)
    for module, names in commands(text):
      for name in names:
        if name.startswith("config.") or name in known[module]:
          continue
        unknown.append(f"{rel(path)}: python -m {module} --{name}")
    # Flags named alone in prose (`--data_dir`, `--tpu=local`) belong to one
    # of the three commands, or to another program named beside them.
    everything = set().union(*known.values())
    for span in inline_code(text):
      match = re.fullmatch(r"--([\w.-]+)(=.*)?", span)
      if not match or match.group(1).startswith("config."):
        continue
      name = match.group(1)
      if name not in everything and f"--{name}" not in OTHER_FLAGS:
        unknown.append(f"{rel(path)}: --{name}")
  assert not unknown, "\n".join(unknown)


def test_the_launch_scripts_pass_trainer_flags_that_exist():
  task = module_flags()["trainer.task"]
  unknown = []
  for path in doc_files():
    text = read(path)
    lines = [l for b in code_blocks(text) for l in b.replace("\\\n", " ").splitlines()]
    lines += inline_code(text)
    for line in lines:
      for match in re.finditer(r"launch/(?:single_gpu|multi_gpu|local_multi_worker)"
                               r"\.sh([^#|;&`]*)", line):
        for name in re.findall(r"(?<![\w-])--([\w.]+)", match.group(1)):
          if not name.startswith("config.") and name not in task:
            unknown.append(f"{rel(path)}: {match.group(0)}")
  assert not unknown, "\n".join(unknown)


# --- (d) config fields ------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def default_config():
  from trainer import cli  # pylint: disable=g-import-not-at-top
  from trainer.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  return config, cli.config_fields(config)


def test_every_config_field_named_exists():
  config, fields = default_config()
  sections = {f.split(".")[0] for f in fields}
  unknown = []
  for path in doc_files() + sorted(
      os.path.join(ROOT, "configs", n) for n in os.listdir(
          os.path.join(ROOT, "configs")) if n.endswith(".py")):
    for name in re.findall(r"(?<![\w/])(?:--)?config\.((?:seed|data|model|train)"
                           r"(?:\.\w+)?)", read(path)):
      if name in fields or name in sections or name in MISSPELT_FIELDS:
        continue
      unknown.append(f"{rel(path)}: config.{name}")
  assert not unknown, "\n".join(unknown)
  assert config.train.num_steps  # the config loaded


def test_configuration_page_lists_every_field_with_its_default():
  config, fields = default_config()
  rows = re.findall(r"^\| `config\.([\w.]+)` \| `([^`]*)` \|", read(CONFIGURATION),
                    re.M)
  listed = dict(rows)
  assert len(listed) == len(rows), "a field is listed twice"
  missing = [f for f in fields if f not in listed]
  assert not missing, f"docs/configuration.md lacks {missing}"
  extra = [f for f in listed if f not in fields]
  assert not extra, f"docs/configuration.md lists fields default.py lacks: {extra}"
  wrong = []
  for field, shown in listed.items():
    value = config
    for part in field.split("."):
      value = value[part]
    documented = ast.literal_eval(shown)
    if documented != value or type(documented) is not type(value):
      wrong.append(f"config.{field}: the page says {shown}, default.py {value!r}")
  assert not wrong, "\n".join(wrong)


# --- (f) the README's size and its two commands -------------------------------------


def test_readme_is_a_front_page_with_the_two_commands():
  with open(README, "rb") as f:
    data = f.read()
  assert len(data) <= 30_000, f"README.md has {len(data)} bytes"
  lines = data.count(b"\n")
  assert lines <= 300, f"README.md has {lines} lines"
  text = data.decode("utf-8")
  blocks = [line.strip() for block in code_blocks(text) for line in block.splitlines()]
  for command in TWO_COMMANDS:
    assert command in blocks, command


def test_readme_links_every_docs_page():
  text = read(README)
  for name in sorted(os.listdir(DOCS_DIR)):
    if name.endswith(".md"):
      assert f"(docs/{name}" in text, f"README.md does not link docs/{name}"


# --- (e) the commands, run ----------------------------------------------------------

# The launch/ scripts' settings: none may come from the caller's environment.
LAUNCH_SETTINGS = (
    "TPU_NAME", "ZONE", "PROJECT", "QUEUED", "SPOT", "ACCELERATOR_TYPE",
    "RUNTIME_VERSION", "DATA_DIR", "MODEL_DIR", "STAGING_DIR", "CONFIG",
    "REGION", "MACHINE_TYPE", "ACCELERATOR_COUNT", "WORKERS", "TPU_TOPOLOGY",
    "IMAGE", "JOB_NAME", "REPO_DIR", "LOG_DIR", "GPU", "NUM_GPUS",
    "REPOSITORY", "POLL_SECONDS", "POD", "WAIT", "CUDA_VISIBLE_DEVICES",
    "FLEX_START", "MAX_WAIT", "TIMEOUT", "RESTART_ON_WORKER_RESTART", "API",
    "TOPOLOGY", "RESERVATION", "IMAGE_FAMILY", "IMAGE_PROJECT")


def setup_commands():
  """The command column of the README's supported-setups table."""
  text = read(README)
  table = text.split("## Supported setups", 1)[1].split("\n## ", 1)[0]
  found = {}
  for row in re.findall(r"^\| (?!---|setup )(.+?) \| (.+?) \| .+ \|$", table, re.M):
    spans = re.findall(r"`([^`]+)`", row[1])
    found[row[0]] = spans[0]
  return found


def test_the_docs_local_commands_run(run):
  # The trainer's own: no TensorFlow, no training.
  printed = run("trainer.task", "--print_config", timeout=60)
  assert printed.returncode == 0, printed.stderr
  assert "num_steps: 15000" in printed.stdout
  scaled = run("trainer.task", "--config=configs/scaled.py",
               "--config.train.target_accuracy=0.99", "--print_config", timeout=60)
  assert scaled.returncode == 0 and "target_accuracy: 0.99" in scaled.stdout
  helped = run("trainer.task", "--help", timeout=60)  # absl: exit status 1
  assert "docs/configuration.md" in helped.stdout, helped.stdout
  misspelt = run("trainer.task", "--config.train.num_step=5", timeout=60)
  assert misspelt.returncode == 2
  assert "did you mean --config.train.num_steps?" in misspelt.stderr.replace(
      " or --config.train.warmup_steps", "").replace(
          " or --config.train.eval_steps", "")

  # Each launch/ command of the supported-setups table, dry (DRY_RUN=1: the
  # commands are printed, gcloud is not asked, nothing is created).
  setups = setup_commands()
  launched = {name: command for name, command in setups.items()
              if "launch/" in command}
  assert len(launched) >= 5, setups
  env = {k: v for k, v in os.environ.items() if k not in LAUNCH_SETTINGS}
  env.update(DRY_RUN="1", PATH=os.pathsep.join(
      [os.path.dirname(sys.executable), env.get("PATH", "")]))
  for name, command in launched.items():
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{name}: {command}\n{result.stderr}"
    printed = result.stdout
    if "single_gpu" in command or "multi_gpu" in command:
      words = shlex.split(printed.splitlines()[-1])
      assert words[1:3] == ["-m", "trainer.task"], printed
    elif "tpu_vm.sh" in command and "API=compute" in command:
      # Compute Engine: an instance of the v6e machine type, worker 0 by ssh.
      assert "gcloud compute instances create" in printed
      assert "--machine-type=ct6e-standard-4t" in printed
      assert "gcloud compute tpus" not in printed and "--strategy=tpu" in printed
    elif "tpu_vm.sh" in command:
      assert "gcloud compute tpus" in printed
      assert "--strategy=tpu" in printed
      if "v5litepod-16" in command:  # a pod: worker 0 drives it by name
        assert "queued-resources create" in printed
        assert "--tpu=masked-attention-tpu" in printed
        assert "(4 host(s))" in result.stderr and "POD=1" in result.stderr
      else:
        assert "--tpu=local" in printed
    elif "vertex_ai.sh tune" in command:
      assert "gcloud ai hp-tuning-jobs create" in printed
      assert '"parameterId": "config.train.learning_rate"' in printed
    elif "vertex_ai.sh" in command:
      assert "gcloud ai custom-jobs create" in printed
      assert '"--data_dir=gs://BUCKET/arith"' in printed
