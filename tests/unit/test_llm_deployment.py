"""集群内 LLMServer 的配置：本机目录的模型跳过各节点的下载任务（真实引擎的启动由 e2e 证明）。"""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.llm import LocalModelCallback, build_llm_config
from serve_app.core.settings import EngineSettings


def _callback(model_source: str) -> LocalModelCallback:
    config = build_llm_config(
        EngineSettings(model_id="report-llm", model_source=model_source, accelerator="cpu")
    )
    # LLMServer 在副本里按 callback_config 的路径加载的正是这个类
    assert config.callback_config.callback_class == "deployments.llm.LocalModelCallback"
    return LocalModelCallback(llm_config=config)


async def test_local_model_directory_skips_node_download(tmp_path: Path) -> None:
    callback = _callback(str(tmp_path))
    assert callback.ctx.run_init_node is True
    await callback.run_callback("on_before_node_init")
    assert callback.ctx.run_init_node is False


@pytest.mark.parametrize(
    "source", ["Qwen/Qwen2.5-7B-Instruct", "s3://bucket/models/qwen", "/no/such/model/dir"]
)
async def test_model_names_and_remote_paths_keep_node_init(source: str) -> None:
    callback = _callback(source)
    await callback.run_callback("on_before_node_init")
    assert callback.ctx.run_init_node is True
