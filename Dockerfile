# vlviz in a container. PyPI's torch wheels for Linux x86_64 carry CUDA, so the app uses the GPU
# when the container is started with `--gpus all` (NVIDIA Container Toolkit on the host), else the CPU.
#   docker build -t vlviz .
#   docker run --gpus all -p 7860:7860 vlviz
# It binds 0.0.0.0, so vlviz runs in public mode (an allow-list of models; docs/hosting.md);
# add `-e VLVIZ_PUBLIC=0` to load any model on a container of your own.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    HF_HOME=/home/vlviz/.cache/huggingface

RUN useradd --create-home --uid 1000 vlviz
WORKDIR /home/vlviz/app

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY --chown=vlviz:vlviz app.py ./
COPY --chown=vlviz:vlviz vlviz ./vlviz
COPY --chown=vlviz:vlviz assets ./assets

USER vlviz
EXPOSE 7860
CMD ["python", "app.py"]
