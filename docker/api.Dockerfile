# The API image: FastAPI + the database migrations, no torch (the backend never imports it),
# s3fs (downloads stream from an S3 artifact store). Its command runs the migrations, then
# serves the API on port 8000.
FROM python:3.11-slim

WORKDIR /app
COPY . .
# Editable, so alembic.ini and migrations/ stay beside the code (backend.db finds them there).
RUN pip install --no-cache-dir -e '.[s3]' \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch in the API image'"

RUN useradd --create-home --uid 1000 fedmomentum \
    && mkdir -p /srv/fedmomentum && chown fedmomentum /srv/fedmomentum
USER fedmomentum
ENV FEDMOMENTUM_DATA_DIR=/srv/fedmomentum PYTHONUNBUFFERED=1
EXPOSE 8000
ENTRYPOINT ["fedmomentum"]
CMD ["up", "--no-worker", "--host", "0.0.0.0", "--port", "8000"]
