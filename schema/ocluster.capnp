# The worker's view of OCluster's scheduler API. Wire-identical to OCluster's
# api/schema.capnp: the same file id, type names and ordinals, so every interface id
# (sent in each call) and every struct layout match. Only what a worker uses is here;
# the submission and admin interfaces do not change these ids.
@0x8378b104cef5b2eb;

struct Secret {
  id @0 :Text;
  value @1 :Text;
}

struct DockerBuild {
  dockerfile :union {
    contents @0 :Text;
    path @5 :Text;
  }
  pushTarget @1 :Text;
  pushUser @2 :Text;
  pushPassword @3 :Text;
  buildArgs @4 :List(Text);
  squash @6 :Bool;
  buildkit @7 :Bool;
  includeGit @8 :Bool;
}

struct OBuilder {
  spec @0 :Text;
}

struct Custom {
  kind @0 :Text;
  payload @1 :AnyPointer;
}

struct JobDescr {
  action :union {
    dockerBuild @0 :DockerBuild;
    obuilder @4 :OBuilder;
    custom @6 :Custom;
  }
  cacheHint @1 :Text;
  repository @2 :Text;
  commits @3 :List(Text);
  secrets @5 :List(Secret);
}

interface Job {
  log @0 (start :Int64) -> (log :Data, next :Int64);
  result @1 () -> (output :Text);
  cancel @2 () -> ();
}

interface Queue {
  pop @0 (job :Job) -> (descr :JobDescr);
  setActive @1 (active :Bool) -> ();
}

struct Metric {
  contentType @0 :Text;
  data @1 :Text;
}

struct AdditionalMetric {
  union {
    metric @0 :Metric;
    notReported @1 :Void;
  }
}

interface Worker {
  enum MetricsSource {
    agent @0;
    host @1;
  }
  metrics @0 (source :MetricsSource) -> (contentType :Text, data :Text);
  additionalMetric @2 (source :Text) -> (metric :AdditionalMetric);
  selfUpdate @1 () -> ();
}

interface Registration {
  register @0 (name :Text, worker :Worker, capacity :Int32) -> (queue :Queue);
}
