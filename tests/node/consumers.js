// dockerode used the way two consumers use the Docker API, for tests/consumers/test_consumer_dockerode.py.
//   node consumers.js homepage NAME     Homepage's widgets: list all containers, inspect one by
//                                       name, one stats sample (stats({stream: false}))
//   node consumers.js uptime-kuma NAME  Uptime Kuma's docker monitor: the host check lists all
//                                       containers, each check inspects the container by name,
//                                       unversioned
// DOCKER_HOST (unix:///path or tcp://127.0.0.1:PORT) says where porthole listens. Prints one
// JSON object with what the consumer would show; exits 1 with the error on stderr otherwise.
"use strict";

const Docker = require("dockerode");

function connect() {
  const url = new URL(process.env.DOCKER_HOST);
  if (url.protocol === "unix:") return new Docker({ socketPath: url.pathname });
  return new Docker({ host: url.hostname, port: Number(url.port), protocol: "http" });
}

async function homepage(docker, name) {
  const listed = await docker.listContainers({ all: true });
  const container = docker.getContainer(name);
  const info = await container.inspect();
  const stats = await container.stats({ stream: false });
  return {
    listed: listed.map((c) => c.Names[0]),
    status: info.State.Status,
    memoryUsage: stats.memory_stats.usage,
    cpuTotalUsage: stats.cpu_stats.cpu_usage.total_usage,
  };
}

async function uptimeKuma(docker, name) {
  const listed = await docker.listContainers({ all: true });
  const info = await docker.getContainer(name).inspect();
  return { listed: listed.map((c) => c.Names[0]), running: info.State.Running, health: info.State.Health || null };
}

async function main() {
  const [mode, name] = process.argv.slice(2);
  const consumers = { homepage, "uptime-kuma": uptimeKuma };
  if (!consumers[mode] || !name) throw new Error("usage: consumers.js homepage|uptime-kuma NAME");
  process.stdout.write(JSON.stringify(await consumers[mode](connect(), name)) + "\n");
}

main().catch((err) => {
  process.stderr.write(`${err.statusCode || ""} ${err.message}\n`);
  process.exit(1);
});
