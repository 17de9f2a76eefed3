"""Ray Serve 部署：模板渲染、回调投递、集群内 LLM（LLMServer）。"""
