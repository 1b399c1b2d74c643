# kingdee-cdc service image: slim, non-root, pinned, with a health check.
#   docker build -t kingdee-cdc:0.1.0 .
#   docker run --rm -v $PWD/config.yaml:/etc/kingdee-cdc/config.yaml kingdee-cdc:0.1.0
# Base image pinned by version; pin by digest in your registry mirror for fully reproducible builds.
FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY connector ./connector
# the single copies of the Avro schemas and the shipped rules, packaged as connector.schemas / connector.rules
COPY schemas ./schemas
COPY rules ./rules
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="kingdee-cdc" \
      org.opencontainers.image.description="Debezium change events to balanced Kingdee K/3 Cloud vouchers, exactly once" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    KDCDC_MAPPING__RULES_DIR=/etc/kingdee-cdc/rules KDCDC_METRICS__HOST=0.0.0.0 KDCDC_LOG_FORMAT=json
RUN groupadd --system --gid 10001 kdcdc && useradd --system --uid 10001 --gid kdcdc --no-create-home kdcdc
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
COPY rules /etc/kingdee-cdc/rules
USER 10001:10001
EXPOSE 9108
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["kingdee-cdc"]
CMD ["run", "--post", "--feedback", "--config", "/etc/kingdee-cdc/config.yaml"]
