// A small OCluster scheduler stand-in for strata's worker tests, against Debian's C++
// Cap'n Proto (libcapnp-dev 0.9). It exports a Registration capability under a name (the
// named bootstrap OCaml's capnp-rpc uses), hands out the jobs of JOBS_DIR to workers that
// pop, and for each job does what OCluster's scheduler does: calls result() at once and
// reads the log through log(start) until it is empty. It writes what it saw to OUT_DIR:
//   events            one line per event: register/assign/done/requeue/active/duplicate/badchunk
//   NAME.log          a job's log as read through log()
//   NAME.result       "ok OUTPUT" or "error DESCRIPTION" (written last: the job is done)
//   metrics-W.txt     worker W's `metrics agent` answer: content type line, then the text
//   metrics-host-W.txt  `metrics host`: "error DESCRIPTION" or content type and text
// Jobs whose NAME.result exists are done: a restarted scheduler does not hand them out again.
// A job file is "key value" lines (kind, repository, commit, secret ID VALUE, cancel-on TEXT)
// then a line "spec" and the spec text.
//
// usage: scheduler PORT JOBS_DIR OUT_DIR SERVICE_ID_HEX PORT_FILE

#include <capnp/ez-rpc.h>
#include <kj/async.h>
#include <kj/debug.h>

#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "ocluster.capnp.h"

struct JobSpec {
  std::string kind = "obuilder";
  std::string repository;
  std::vector<std::string> commits;
  std::vector<std::pair<std::string, std::string>> secrets;
  std::string cancelOn;
  std::string spec;
};

struct Waiter {
  std::string worker;
  Job::Client job;
  kj::Own<kj::PromiseFulfiller<std::string>> fulfiller;
};

struct Tracked {
  std::string worker, name, log, cancelOn;
  bool cancelled = false;
};

class State : public kj::TaskSet::ErrorHandler {
 public:
  std::string out;
  std::map<std::string, JobSpec> jobs;
  std::deque<std::string> queue;
  std::deque<Waiter> waiting;
  std::set<std::string> live, inactive;
  std::map<std::string, Worker::Client> workers;
  kj::TaskSet tasks{*this};

  void taskFailed(kj::Exception&& e) override { event("taskfailed " + std::string(e.getDescription().cStr())); }

  void event(const std::string& line) {
    std::ofstream f(out + "/events", std::ios::app);
    f << line << "\n";
  }

  void write(const std::string& file, const std::string& text) {
    std::string tmp = out + "/." + file + ".tmp";
    { std::ofstream f(tmp, std::ios::trunc | std::ios::binary); f << text; }
    std::rename(tmp.c_str(), (out + "/" + file).c_str());
  }

  void dispatch() {
    while (!queue.empty()) {
      // Forget pops whose caller went away.
      waiting.erase(std::remove_if(waiting.begin(), waiting.end(),
                                   [](Waiter& w) { return !w.fulfiller->isWaiting(); }),
                    waiting.end());
      auto it = std::find_if(waiting.begin(), waiting.end(), [&](Waiter& w) {
        return w.fulfiller->isWaiting() && live.count(w.worker) && !inactive.count(w.worker);
      });
      if (it == waiting.end()) return;
      Waiter w = kj::mv(*it);
      waiting.erase(it);
      std::string name = queue.front();
      queue.pop_front();
      event("assign " + w.worker + " " + name);
      tasks.add(track(w.worker, name, w.job));
      w.fulfiller->fulfill(std::string(name));
    }
  }

  kj::Promise<void> readLog(Job::Client job, std::shared_ptr<Tracked> t, int64_t start) {
    auto req = job.logRequest();
    req.setStart(start);
    return req.send().then([this, job, t, start](capnp::Response<Job::LogResults> resp) mutable -> kj::Promise<void> {
      auto data = resp.getLog();
      if (data.size() > 10240 || resp.getNext() != start + (int64_t)data.size()) event("badchunk " + t->name);
      if (data.size() == 0) return kj::READY_NOW;
      t->log.append(reinterpret_cast<const char*>(data.begin()), data.size());
      if (!t->cancelOn.empty() && !t->cancelled && t->log.find(t->cancelOn) != std::string::npos) {
        t->cancelled = true;
        event("cancel " + t->name);
        tasks.add(job.cancelRequest().send().ignoreResult());
      }
      return readLog(job, t, resp.getNext());
    });
  }

  kj::Promise<void> track(std::string worker, std::string name, Job::Client job) {
    auto t = std::make_shared<Tracked>();
    t->worker = worker;
    t->name = name;
    t->cancelOn = jobs[name].cancelOn;
    auto result = job.resultRequest().send().then(
        [](capnp::Response<Job::ResultResults> r) { return "ok " + std::string(r.getOutput().cStr()); },
        [](kj::Exception&& e) {
          std::string kind = e.getType() == kj::Exception::Type::DISCONNECTED ? "disconnected " : "error ";
          return kind + std::string(e.getDescription().cStr());
        });
    auto log = readLog(job, t, 0).then([]() { return std::string(); },
                                       [](kj::Exception&& e) { return std::string(e.getDescription().cStr()); });
    return result.then([this, t, log = kj::mv(log)](std::string outcome) mutable {
      event("result " + t->worker + " " + t->name);
      return log.then([this, t, outcome](std::string logError) -> kj::Promise<void> {
        if (outcome.rfind("disconnected ", 0) == 0) {
          event("requeue " + t->name + " " + t->worker);
          queue.push_front(t->name);
          dispatch();
          return kj::READY_NOW;
        }
        write(t->name + ".log", t->log);
        write(t->name + ".result", outcome + "\n");
        event("done " + t->worker + " " + t->name);
        return scrape(t->worker);
      });
    });
  }

  kj::Promise<void> scrape(std::string worker) {
    auto it = workers.find(worker);
    if (it == workers.end()) return kj::READY_NOW;
    auto agent = it->second.metricsRequest();
    agent.setSource(Worker::MetricsSource::AGENT);
    auto host = it->second.metricsRequest();
    host.setSource(Worker::MetricsSource::HOST);
    auto extra = it->second.additionalMetricRequest();
    extra.setSource("nosuch");
    auto a = agent.send().then([this, worker](capnp::Response<Worker::MetricsResults> r) {
      write("metrics-" + worker + ".txt",
            std::string(r.getContentType().cStr()) + "\n" + std::string(r.getData().cStr()));
    });
    auto h = host.send().then(
        [this, worker](capnp::Response<Worker::MetricsResults> r) {
          write("metrics-host-" + worker + ".txt", std::string(r.getContentType().cStr()) + "\n" + r.getData().cStr());
        },
        [this, worker](kj::Exception&& e) {
          write("metrics-host-" + worker + ".txt", "error " + std::string(e.getDescription().cStr()) + "\n");
        });
    auto x = extra.send().then([this, worker](capnp::Response<Worker::AdditionalMetricResults> r) {
      write("additional-" + worker + ".txt", r.getMetric().isNotReported() ? "notReported\n" : "reported\n");
    });
    return a.then([h = kj::mv(h)]() mutable { return kj::mv(h); }).then([x = kj::mv(x)]() mutable { return kj::mv(x); });
  }
};

class QueueImpl final : public Queue::Server {
 public:
  QueueImpl(State& state, std::string name) : state(state), name(name) {}
  ~QueueImpl() noexcept(false) {
    state.event("gone " + name);
    state.live.erase(name);
    state.inactive.erase(name);
    state.workers.erase(name);
  }

 protected:
  kj::Promise<void> pop(PopContext context) override {
    auto paf = kj::newPromiseAndFulfiller<std::string>();
    state.waiting.push_back(Waiter{name, context.getParams().getJob(), kj::mv(paf.fulfiller)});
    state.dispatch();
    return paf.promise.then([this, context](std::string job) mutable {
      const JobSpec& spec = state.jobs[job];
      auto descr = context.getResults().initDescr();
      if (spec.kind == "obuilder") {
        descr.getAction().initObuilder().setSpec(spec.spec);
      } else if (spec.kind == "docker") {
        descr.getAction().initDockerBuild().getDockerfile().setContents(spec.spec);
      } else {
        descr.getAction().initCustom().setKind(spec.kind);
      }
      descr.setRepository(spec.repository);
      auto commits = descr.initCommits(spec.commits.size());
      for (size_t i = 0; i < spec.commits.size(); i++) commits.set(i, spec.commits[i]);
      auto secrets = descr.initSecrets(spec.secrets.size());
      for (size_t i = 0; i < spec.secrets.size(); i++) {
        secrets[i].setId(spec.secrets[i].first);
        secrets[i].setValue(spec.secrets[i].second);
      }
    });
  }

  kj::Promise<void> setActive(SetActiveContext context) override {
    bool active = context.getParams().getActive();
    state.event(std::string("active ") + name + (active ? " 1" : " 0"));
    if (active) {
      state.inactive.erase(name);
      state.dispatch();
    } else {
      state.inactive.insert(name);
    }
    return kj::READY_NOW;
  }

 private:
  State& state;
  std::string name;
};

class RegistrationImpl final : public Registration::Server {
 public:
  explicit RegistrationImpl(State& state) : state(state) {}

 protected:
  kj::Promise<void> register_(RegisterContext context) override {
    auto params = context.getParams();
    std::string name = params.getName();
    if (state.live.count(name)) {
      state.event("duplicate " + name);
      return KJ_EXCEPTION(FAILED, "Worker already registered!");
    }
    state.live.insert(name);
    state.workers.erase(name);
    state.workers.emplace(name, params.getWorker());
    state.event("register " + name + " " + std::to_string(params.getCapacity()));
    context.getResults().setQueue(kj::heap<QueueImpl>(state, name));
    return kj::READY_NOW;
  }

 private:
  State& state;
};

static JobSpec readJob(const std::string& path) {
  std::ifstream f(path);
  JobSpec job;
  std::string line;
  while (std::getline(f, line)) {
    if (line == "spec") {
      std::stringstream rest;
      rest << f.rdbuf();
      job.spec = rest.str();
      break;
    }
    auto sp = line.find(' ');
    std::string key = line.substr(0, sp), value = sp == std::string::npos ? "" : line.substr(sp + 1);
    if (key == "kind") job.kind = value;
    else if (key == "repository") job.repository = value;
    else if (key == "commit") job.commits.push_back(value);
    else if (key == "cancel-on") job.cancelOn = value;
    else if (key == "secret") {
      auto sp2 = value.find(' ');
      job.secrets.emplace_back(value.substr(0, sp2), value.substr(sp2 + 1));
    }
  }
  return job;
}

int main(int argc, char** argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s PORT JOBS_DIR OUT_DIR SERVICE_ID_HEX PORT_FILE\n", argv[0]);
    return 2;
  }
  State state;
  state.out = argv[3];
  std::vector<std::string> names;
  if (DIR* d = opendir(argv[2])) {
    while (dirent* e = readdir(d)) {
      std::string f = e->d_name;
      if (f.size() > 4 && f.substr(f.size() - 4) == ".job") names.push_back(f.substr(0, f.size() - 4));
    }
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  for (auto& n : names) {
    state.jobs[n] = readJob(std::string(argv[2]) + "/" + n + ".job");
    if (!std::ifstream(state.out + "/" + n + ".result")) state.queue.push_back(n);
  }
  std::string hex = argv[4], id;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) id.push_back((char)std::stoi(hex.substr(i, 2), nullptr, 16));

  capnp::EzRpcServer server("127.0.0.1", (uint)std::stoi(argv[1]));
  server.exportCap(kj::StringPtr(id.data(), id.size()), kj::heap<RegistrationImpl>(state));
  auto& ws = server.getWaitScope();
  uint port = server.getPort().wait(ws);
  {
    std::ofstream f(std::string(argv[5]) + ".tmp");
    f << port << "\n";
  }
  std::rename((std::string(argv[5]) + ".tmp").c_str(), argv[5]);
  state.event("listening " + std::to_string(port) + " queued " + std::to_string(state.queue.size()));
  kj::NEVER_DONE.wait(ws);
}
