"""`sdrt serve` and `sdrt batch`: an image service that AUTOMATIC1111 and OpenAI clients speak, and offline runs.

Modules, by job: `limits` (what a request may ask), `samplers` (A1111's names), `queueing` (the
bounded queue and the batcher), `service` (one worker thread per model), `dispatch` (an HTTP request
waiting for its job), `a1111` and `openai_api` (the routes), `metrics` (Prometheus), `app` (the
FastAPI app and its guards), `commands_serve` / `commands_batch` (the CLI), `ray_serve` /
`ray_batch` (scale-out). FastAPI, uvicorn and Ray are imported only by the modules that need them
(extra `sdrt[serve]`, `sdrt[ray]`); nothing here imports torch.
"""
