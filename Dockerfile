# One image for web (gunicorn), worker, trainer and beat (docker-compose.yml changes only the command).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    HOME=/home/app VAR_DIR=/var/lib/recommender
WORKDIR /app
COPY requirements.txt .
# For a smaller CPU-only image, point pip at the PyTorch CPU wheel index before this step:
#   RUN pip install torch==<pin> torchvision==<pin> --index-url https://download.pytorch.org/whl/cpu
RUN pip install -r requirements.txt
# Run as an unprivileged user; the named volume mounted at VAR_DIR inherits this folder's owner.
RUN useradd --create-home --home-dir /home/app --uid 10001 app \
    && mkdir -p /var/lib/recommender && chown app:app /var/lib/recommender
COPY --chown=app:app . .
USER app
EXPOSE 8000
CMD ["gunicorn", "recommender.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "2", "--timeout", "120"]
