# radrouter on Debian bookworm with Python 3.11, CPU inference (onnxruntime).
# Build: docker build -t radrouter .    Run: docker run -p 11112:11112 -p 8080:8080 radrouter
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends dcmtk \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/radrouter
COPY pyproject.toml README.md ./
COPY router router
COPY algorithms algorithms
COPY dicom_sr dicom_sr
COPY worklist worklist
COPY config config
RUN pip install --no-cache-dir .

# Data (spool, database, results) lives in a volume. The shipped config serves HTTP on
# loopback only; mount your own (http.host: 0.0.0.0) and add: --config /etc/radrouter.yaml
RUN mkdir -p /var/lib/radrouter && chown nobody /var/lib/radrouter
VOLUME /var/lib/radrouter
EXPOSE 11112 8080
USER nobody
ENTRYPOINT ["radrouter", "serve", "--data-dir", "/var/lib/radrouter"]
