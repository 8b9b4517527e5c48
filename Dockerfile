# Image for every CSMS role: `csms gateway`, `csms manager`, `csms api`, `csms run`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY cli cli
COPY csms csms
COPY gateway gateway
COPY manager manager
COPY operations operations
COPY services services
COPY ocpp_schemas ocpp_schemas
COPY simulator simulator
COPY webhooks webhooks
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["csms"]
CMD ["run", "--host", "0.0.0.0"]
