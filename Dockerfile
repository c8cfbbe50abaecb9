# syntax=docker/dockerfile:1
#
# Sluice container image: a build stage compiles the TypeScript and drops
# dev dependencies; the runtime stage holds only the compiled gateway, its
# production node_modules and the examples, and runs as an unprivileged user.
#
#   docker build -t sluice .
#   docker run --rm -p 6432:6432 -v $PWD/sluice.yaml:/etc/sluice/sluice.yaml:ro \
#     -v sluice-state:/var/lib/sluice -e APP_DB_PASSWORD sluice
#
# The config's state_dir should point at /var/lib/sluice (dev issuer keys,
# dev TLS material); listeners must bind 0.0.0.0 to be reachable from outside
# the container, which means allow_insecure_loopback does not apply: give the
# clients TLS.

FROM node:20-bookworm-slim AS build
# better-sqlite3 (the audit store) is a native module built by node-gyp.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
COPY protocols ./protocols
COPY masking ./masking
COPY bench ./bench
COPY test ./test
# `npm ci` runs the `prepare` script, which compiles with tsc.
RUN npm ci --no-audit --no-fund \
 && npm prune --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist/src ./dist/src
COPY --from=build /src/dist/protocols ./dist/protocols
# The masking worker pool loads dist/masking/worker.js in its threads.
COPY --from=build /src/dist/masking ./dist/masking
COPY examples ./examples
RUN mkdir -p /var/lib/sluice /etc/sluice \
 && chown node:node /var/lib/sluice \
 && ln -s /app/dist/src/cli/main.js /usr/local/bin/sluice
# The node image's unprivileged user (uid 1000).
USER node
VOLUME ["/var/lib/sluice"]
EXPOSE 6432 6380 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["node", "/app/dist/src/cli/main.js", "health", "--config", "/etc/sluice/sluice.yaml"]
ENTRYPOINT ["node", "/app/dist/src/cli/main.js"]
CMD ["serve", "--config", "/etc/sluice/sluice.yaml"]
