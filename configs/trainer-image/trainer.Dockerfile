# The trainer image. Its base is the local python builder: nothing can be pulled from the
# internet here (on Cloud Build this would be python:3.11-slim).
FROM builder/python:latest
WORKDIR /app
# Requirements first, so code changes reuse the installed layer.
COPY training-pipeline/trainer/requirements.txt trainer/
RUN pip install --no-cache-dir -r trainer/requirements.txt
COPY training-pipeline/trainer/ trainer/
ENTRYPOINT ["python", "-m", "trainer.train"]
