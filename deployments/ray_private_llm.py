"""LLM 部署用到的 Ray LLM 私有 API（Serve 的在 ray_private.py）。

单独一个模块：导入 ray.llm 的内部配置模块会带进 transformers 与 torch（本机导入约 4 秒、每个进程
多约 500 MB 内存）。入口、账本、回调副本只用 Serve 的私有 API，不该背这些（渲染副本启动时为试编译
内置的 JSON schema 另外加载 xgrammar，那是它自己要的）；只有 deployments/llm.py（LLM 副本与构建
应用的那一步）导入这里。tests/unit/test_ray_private.py 逐个真实调用它们，
tests/unit/test_app_graph.py 盯着控制面的部署模块导入时不带进 torch。

NOTE: 这些名字不在 Ray 的公开 API 里，升级 Ray 时可能改名或改语义而不报错。
"""

from __future__ import annotations

# 初始化回调基类：LLMConfig.callback_config 按路径加载它的子类，ray.serve.llm 没有再导出它
from ray.llm._internal.common.callbacks.base import CallbackBase

# 校验后的 LLMConfig.model_loading_config 是这个内部类的实例（ray.serve.llm 只导出它的公开子类，
# isinstance 判断与构造都要内部类）
from ray.llm._internal.serve.core.configs.llm_config import ModelLoadingConfig

__all__ = ["CallbackBase", "ModelLoadingConfig"]
