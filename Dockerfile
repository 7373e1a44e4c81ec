# Image for web, worker, trainer and beat (docker-compose.yml).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1
WORKDIR /app
COPY requirements.txt .
# For a smaller CPU-only image, point pip at the PyTorch CPU wheel index before this step.
RUN pip install -r requirements.txt
COPY . .
EXPOSE 8000
CMD ["gunicorn", "recommender.wsgi", "-b", "0.0.0.0:8000", "-w", "2"]
