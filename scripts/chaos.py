#!/usr/bin/env python3
"""A chaos soak of the continuum (not a CI test): nats-server, a control plane and three
node agents run as processes of their own, each started again when it dies; apps
(migratable and not, with a volume file and without) are deployed in waves and
checked against an uninterrupted run of the same program when they end; every 10 to
60 s a random fault strikes: SIGKILL or SIGSTOP (5 to 20 s) of a node, of the
control plane or of nats-server; both cores are kept busy half of the time.

At the end it reports, and exits non-zero unless all are 0:
  - apps lost: never ended, or failed;
  - apps run twice at once: sampled twice a second, an app with running (not
    stopped) instance processes on two nodes;
  - output lines lost or repeated, against the uninterrupted run (the lines that a
    restart from the app's start repeats, which its log marks, are counted apart: an
    app that is not migratable, or whose node was lost before its first checkpoint,
    can only start again from its start);
  - volume lines lost or repeated (the journal file, read with `tern cp`).

    python3 scripts/chaos.py [--minutes 30] [--tern target/debug/tern] [--seed N]

Everything it makes is under target/chaos; the log of each process is there.
"""

import argparse
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def nats_server():
    found = shutil.which("nats-server")
    if found:
        return found
    home = os.environ.get("TERN_NATS_HOME", os.path.expanduser("~/.local/share/tern/nats"))
    path = os.path.join(home, "bin", "nats-server")
    if os.path.exists(path):
        return path
    sys.exit("chaos: nats-server not found; run `bash scripts/setup.sh` first")


class Proc:
    """A process of the continuum, started again after it dies."""

    def __init__(self, name, argv, env, log):
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.p = None
        self.stopped_until = None
        self.start()

    def start(self):
        out = open(self.log, "ab")
        self.p = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=out,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        self.started = time.time()

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        try:
            os.kill(self.p.pid, sig)
        except ProcessLookupError:
            pass


class Continuum:
    def __init__(self, tern, state):
        self.tern, self.state = tern, state
        os.makedirs(state, exist_ok=True)
        self.token = os.urandom(32).hex()
        self.api_port = free_port()
        nodes = [("cloud", "cloud", []), ("edge", "edge", ["--cores", "1"]),
                 ("gateway", "edge", ["--cores", "1"])]
        backbone = self.bootstrap(tern, state, [n for n, _, _ in nodes])
        with open(os.path.join(backbone, "port")) as f:
            self.nats_port = int(f.read().strip())
        ca = os.path.join(backbone, "tls", "ca.pem")
        url = "tls://127.0.0.1:%d" % self.nats_port
        logs = os.path.join(state, "logs")
        os.makedirs(logs, exist_ok=True)
        # The backbone `tern up` set up (operator mode, TLS, the stores), run by itself.
        self.procs = {
            "nats": Proc("nats", [nats_server(), "--jetstream", "--addr", "127.0.0.1", "--port",
                                  str(self.nats_port), "--config",
                                  os.path.join(backbone, "server.conf"), "--store_dir",
                                  backbone], dict(os.environ),
                         os.path.join(logs, "nats.log")),
        }
        self.wait_port(self.nats_port)
        control_env = dict(os.environ, TERN_CREDS=os.path.join(backbone, "control.creds"),
                           TERN_CA=ca, TERN_TOKEN=self.token,
                           TERN_AUTHORITY=os.path.join(backbone, "authority"))
        self.procs["controller"] = Proc(
            "controller", [tern, "controller", "--nats", url, "--listen",
                           "127.0.0.1:%d" % self.api_port], control_env,
            os.path.join(logs, "controller.log"))
        for name, tier, extra in nodes:
            env = dict(os.environ, TERN_CA=ca,
                       TERN_CREDS=os.path.join(backbone, "nodes", name + ".creds"))
            self.procs[name] = Proc(
                name, [tern, "node", "--nats", url, "--name", name, "--site", name, "--tier",
                       tier, "--memory", "2GiB", "--state", os.path.join(state, "nodes", name)]
                + extra, env, os.path.join(logs, name + ".log"))
        self.env = dict(os.environ, TERN_API="http://127.0.0.1:%d" % self.api_port,
                        TERN_TOKEN=self.token)

    @staticmethod
    def bootstrap(tern, state, names):
        """Runs `tern up` once with nodes of these names, until it is up, and stops it:
        it leaves the backbone's authority, configuration (operator mode, TLS), stores
        and every process's credentials in STATE/up/nats, which the soak runs by itself.
        Returns that directory."""
        up = os.path.join(state, "up")
        config = os.path.join(state, "bootstrap.toml")
        with open(config, "w") as f:
            for n in names:
                f.write('[[node]]\nname = "%s"\ntier = "edge"\nmemory = "256MiB"\n' % n)
        log = open(os.path.join(state, "bootstrap.log"), "w")
        proc = subprocess.Popen([tern, "up", "--config", config, "--state", up, "--listen",
                                 "127.0.0.1:%d" % free_port()], stdout=log, stderr=log)
        deadline = time.time() + 300
        while not os.path.exists(os.path.join(up, "api", "join-command")):
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                sys.exit("chaos: `tern up` did not set the backbone up; see %s" % log.name)
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        return os.path.join(up, "nats")

    @staticmethod
    def wait_port(port, within=30):
        deadline = time.time() + within
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        sys.exit("chaos: nothing listens on port %d" % port)

    def verb(self, *args, timeout=60):
        try:
            r = subprocess.run([self.tern, *args], env=self.env, capture_output=True,
                               timeout=timeout)
            return r.returncode, r.stdout, r.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired:
            return None, b"", "timed out"

    def keep(self):
        """Starts again what died (nats-server on the same port and state)."""
        for p in self.procs.values():
            if p.stopped_until and time.time() >= p.stopped_until:
                p.signal(signal.SIGCONT)
                p.stopped_until = None
            if not p.alive():
                p.start()

    def stop(self):
        for name in ["controller", "cloud", "edge", "gateway", "nats"]:
            p = self.procs[name]
            p.signal(signal.SIGCONT)
            p.signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.p.kill()


def reference(tern, wasm, args, volume, cache):
    """The output (and journal) of an uninterrupted run."""
    key = (wasm, tuple(args), volume)
    if key not in cache:
        d = os.path.join(ROOT, "target", "chaos", "reference", str(len(cache)))
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        argv = [tern, "run"] + (["--dir", d + "::/data"] if volume else []) + [wasm] + args
        out = subprocess.run(argv, capture_output=True).stdout
        journal = open(os.path.join(d, "journal.txt"), "rb").read() if volume else None
        cache[key] = (out, journal)
    return cache[key]


def diff_lines(got, want):
    """Lines lost and lines repeated, as multisets."""
    g = collections.Counter(got.splitlines())
    w = collections.Counter(want.splitlines())
    lost = sum((w - g).values())
    repeated = sum((g - w).values())
    return lost, repeated


def instances(state):
    """Running (not stopped) instance processes, by app and node."""
    out = collections.defaultdict(set)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open("/proc/%s/cmdline" % pid, "rb").read().replace(b"\0", b" ").decode()
            st = open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if " instance " not in cmd or state not in cmd or st in ("T", "t", "Z"):
            continue
        # …/nodes/NODE/apps/APP/INCARNATION/spec.json
        parts = cmd.split("/nodes/", 1)[-1].split("/")
        if len(parts) > 3 and parts[1] == "apps":
            out[parts[2]].add(parts[0])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--tern", default=os.path.join(ROOT, "target", "debug", "tern"))
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--apps", type=int, default=20, help="apps running at once")
    o = ap.parse_args()
    rng = random.Random(o.seed)
    tern = os.path.abspath(o.tern)
    work = os.path.join(ROOT, "target", "chaos")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "apps"))
    cc = ["clang-19", "--target=wasm32-wasi", "--sysroot=/usr", "-O2"]
    for g in ["steps", "journal"]:
        subprocess.run(cc + [os.path.join(ROOT, "guests", g + ".c"), "-o",
                             os.path.join(work, "apps", g + ".wasm")], check=True)
    state = os.path.join(work, "state")
    c = Continuum(tern, state)
    print("chaos: seed %d, %s minutes, %d apps at once; logs in %s/logs"
          % (o.seed, o.minutes, o.apps, state), flush=True)

    cache = {}
    apps = {}  # name -> dict(kind, args, volume, deployed)
    results = {"ended": 0, "lost": [], "twice": set(), "out_lost": 0, "out_repeated": 0,
               "restart_repeats": 0,
               "vol_lost": 0, "vol_repeated": 0, "faults": collections.Counter()}
    stop_sampling = threading.Event()

    def sample():
        # An app with instances on two nodes while it migrates is expected (the
        # destination waits for the guest); twice at once is two, with no move under
        # way, seen in two samples in a row.
        seen = set()
        while not stop_sampling.is_set():
            doubled = {a for a, nodes in instances(state).items() if len(nodes) > 1}
            if doubled:
                code, out, _ = c.verb("ps", "--json", timeout=10)
                rows = {a["name"]: a for a in json.loads(out)} if code == 0 else {}
                moving = {n for n, a in rows.items()
                          if a.get("moving") or a.get("state") == "migrating"}
                if code != 0:
                    moving = doubled
                doubled -= moving
            for app in doubled & seen:
                if app not in results["twice"]:
                    print("chaos: %s runs on two nodes at once" % app, flush=True)
                results["twice"].add(app)
            seen = doubled
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    counter = [0]

    def deploy():
        counter[0] += 1
        kind = rng.choice(["journal", "journal", "steps"])
        migratable = rng.random() < 0.7
        name = "%s-%d" % (kind, counter[0])
        if kind == "journal":
            args = ["/data", str(rng.randint(60, 200)), "30000000"]
        else:
            args = [str(rng.randint(40, 120)), "40000000"]
        manifest = os.path.join(work, "apps", name + ".toml")
        with open(manifest, "w") as f:
            f.write('name = "%s"\nmodule = "%s.wasm"\nargs = %s\nmigratable = %s\n'
                    % (name, kind, json.dumps(args), "true" if migratable else "false"))
            if migratable:
                f.write('checkpoint_every = "1s"\n')
            if kind == "journal":
                f.write('[[volumes]]\nguest = "/data"\n')
        code, _, err = c.verb("deploy", manifest)
        if code == 0:
            apps[name] = {"kind": kind, "args": args, "volume": kind == "journal",
                          "migratable": migratable, "deployed": time.time()}
        # A deploy refused while the backbone or the control plane is down is tried
        # again with the next wave.

    def check_ended():
        code, out, _ = c.verb("ps", "--json")
        if code != 0:
            return
        rows = {a["name"]: a for a in json.loads(out)}
        for name in list(apps):
            a = rows.get(name)
            if a is None or a["state"] not in ("exited", "failed"):
                if time.time() - apps[name]["deployed"] > 900:
                    results["lost"].append((name, a and a["state"]))
                    del apps[name]
                continue
            info = apps.pop(name)
            wasm = os.path.join(work, "apps", info["kind"] + ".wasm")
            want_out, want_journal = reference(tern, wasm, info["args"], info["volume"], cache)
            if a["state"] == "failed":
                results["lost"].append((name, a.get("reason")))
                continue
            code, got, notes = c.verb("logs", name)
            if code != 0:
                # The control plane is away: checked at the next look.
                apps[name] = info
                continue
            journal = None
            if info["volume"]:
                code, journal, _ = c.verb("cp", name + ":/data/journal.txt", "-")
                if code != 0:
                    apps[name] = info
                    continue
            results["ended"] += 1
            restarted = notes.count("started again from its start")
            if restarted and got != want_out and got.endswith(want_out):
                # Each restart from its start (an app that is not migratable, or one
                # whose node was lost before its first checkpoint) repeats what it
                # printed before, as the note in its log says; its last run printed it
                # all.
                results["restart_repeats"] += len(got.splitlines()) - len(want_out.splitlines())
                got = want_out
            lost, rep = diff_lines(got, want_out)
            results["out_lost"] += lost
            results["out_repeated"] += rep
            if lost or rep:
                print("chaos: %s output: %d lines lost, %d repeated" % (name, lost, rep),
                      flush=True)
            if journal is not None:
                lost, rep = diff_lines(journal, want_journal)
                results["vol_lost"] += lost
                results["vol_repeated"] += rep
                if lost or rep:
                    print("chaos: %s journal: %d lines lost, %d repeated" % (name, lost, rep),
                          flush=True)
            c.verb("rm", name)

    def fault():
        target = rng.choice(["cloud", "edge", "gateway", "controller", "nats"])
        how = rng.choice(["KILL", "STOP"])
        p = c.procs[target]
        if how == "KILL":
            p.signal(signal.SIGCONT)
            p.signal(signal.SIGKILL)
        else:
            p.signal(signal.SIGSTOP)
            p.stopped_until = time.time() + rng.uniform(5, 20)
        results["faults"][target + " " + how] += 1
        print("chaos: %s SIG%s" % (target, how), flush=True)

    busy = []
    end = time.time() + o.minutes * 60
    next_fault = time.time() + rng.uniform(10, 60)
    next_phase = time.time() + 120
    # Let the nodes join first.
    while c.verb("nodes", "--json")[1].count(b'"name"') < 3 and time.time() < end:
        c.keep()
        time.sleep(0.5)
    while time.time() < end:
        c.keep()
        if len(apps) < o.apps:
            deploy()
        if time.time() >= next_fault:
            fault()
            next_fault = time.time() + rng.uniform(10, 60)
        if time.time() >= next_phase:
            if busy:
                for b in busy:
                    b.kill()
                busy = []
            else:
                busy = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2)]
            next_phase = time.time() + 120
        check_ended()
        time.sleep(1)
    for b in busy:
        b.kill()
    # No more faults: let every app end, then check them.
    for p in c.procs.values():
        p.signal(signal.SIGCONT)
        p.stopped_until = None
    deadline = time.time() + 900
    while apps and time.time() < deadline:
        c.keep()
        check_ended()
        time.sleep(1)
    for name in apps:
        results["lost"].append((name, "did not end within 15 min after the faults"))
    stop_sampling.set()
    c.stop()
    report = {
        "minutes": o.minutes, "seed": o.seed, "apps ended and checked": results["ended"],
        "apps lost": len(results["lost"]), "apps run twice at once": len(results["twice"]),
        "output lines lost": results["out_lost"],
        "output lines repeated": results["out_repeated"],
        "volume lines lost": results["vol_lost"],
        "volume lines repeated": results["vol_repeated"],
        "lines repeated by marked restarts from the start (apps not migratable, or lost before their first checkpoint)":
            results["restart_repeats"],
        "faults": dict(results["faults"]),
    }
    print(json.dumps(report, indent=2))
    for name, why in results["lost"]:
        print("chaos: lost %s: %s" % (name, why))
    if results["twice"]:
        print("chaos: run twice at once: %s" % ", ".join(sorted(results["twice"])))
    bad = (report["apps lost"] + report["apps run twice at once"] + results["out_lost"]
           + results["out_repeated"] + results["vol_lost"] + results["vol_repeated"])
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
