# attnviz web app: docker build -t attnviz . && docker run -p 7860:7860 attnviz
FROM python:3.11-slim

RUN useradd -m -u 1000 user
WORKDIR /home/user/app

COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=user . .
RUN pip install --no-cache-dir --no-deps -e .

USER user
ENV HOME=/home/user \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    MPLCONFIGDIR=/tmp/matplotlib
# ATTNVIZ_DEVICE=cuda / cpu overrides the automatic choice (CUDA when present)

# Pre-warm: fetch the default real models at build time (the Space defaults to them). Without network the
# build goes on and the app downloads them, with progress, when they are first chosen; the zoo is always there.
ARG PREWARM="ccnet_r50_d8_cityscapes seresnet50"
RUN if [ -n "$PREWARM" ]; then attnviz download $PREWARM || echo "pre-warm skipped: models download on first use"; fi
EXPOSE 7860
CMD ["python", "app.py"]
