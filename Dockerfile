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
EXPOSE 7860
CMD ["python", "app.py"]
