# The image the DaemonSet runs (install/30-daemonset.yaml): weftd and weftctl on Node 24, and
# the packaged CNI plugin that the install-cni init container copies onto hosts without Node.js:
# the fast-path launcher (static C) as bin/weft, the Node single executable application as
# bin/weft-standalone (the launcher's fallback), and its native addons.
#
#   docker build -t weft:0.1.0 .
#   scripts/image.sh             # the same with podman, also without a registry (local base images)

FROM node:24-bookworm-slim AS build
# gcc + libc6-dev: the setns addon and the static fast-path launcher (libc.a).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY cmd cmd
COPY src src
COPY scripts scripts
# Bundles name the interpreter they run under in the final image.
ENV WEFT_SHEBANG=/usr/local/bin/node
RUN node scripts/build.ts && node scripts/package.ts

FROM debian:bookworm-slim AS cni-plugins
RUN apt-get update \
 && apt-get install -y --no-install-recommends containernetworking-plugins \
 && rm -rf /var/lib/apt/lists/*

FROM debian:bookworm-slim
# What weftd execs: nft (its rules, the Service proxy's table), iptables-{nft,legacy}-{save,restore}
# (WEFT-FORWARD where a host firewall's FORWARD policy drops), conntrack (the proxy's stale UDP
# flows).
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iptables conntrack ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/node /usr/local/bin/node
# weftd and weftctl: bundles (weftd's in pieces: the starter, weftd.mjs and its chunks, and the
# license notices esbuild moved out of them); the setns addon beside them (bin/../native); the
# one native module the bundles leave external, resolved from /opt/weft/node_modules.
COPY --from=build /src/dist/bin/weftd /src/dist/bin/weftd*.mjs /src/dist/bin/weftd*.LEGAL.txt /src/dist/bin/weftctl /src/dist/bin/weft-cni-worker.js /opt/weft/bin/
COPY --from=build /src/dist/native/ /opt/weft/native/
# etcd3's .proto files, read at run time from bin/../proto; the CommonJS scope marker.
COPY --from=build /src/dist/proto/ /opt/weft/proto/
COPY --from=build /src/dist/package.json /opt/weft/package.json
COPY --from=build /src/node_modules/netlink /opt/weft/node_modules/netlink
COPY --from=build /src/node_modules/node-gyp-build /opt/weft/node_modules/node-gyp-build
# The CNI plugin as installed on hosts (scripts/package.ts): bin/weft is the launcher, which
# falls back to bin/weft-standalone beside it; that finds its addons in bin/../lib/weft.
COPY --from=build /src/dist/pkg/ /opt/weft/cni/
COPY --from=cni-plugins /usr/lib/cni/portmap /opt/weft/cni/bin/portmap
COPY cni-conf/10-weft.conflist /opt/weft/cni/10-weft.conflist
COPY install/install-cni.sh /opt/weft/install-cni.sh
RUN ln -s /opt/weft/bin/weftd /opt/weft/bin/weftctl /usr/local/bin/
ENTRYPOINT ["/opt/weft/bin/weftd"]
