#include "app/archive_cli.h"

#include "archive/bucket.h"
#include "archive/export.h"
#include "archive/index.h"
#include "archive/keys.h"
#include "archive/retention.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>

namespace sightline::app {

namespace archive = sightline::archive;

struct ArchiveRetrievalCli::Flags {
  std::string dir, key, id, out, by, reason;
  std::string user, host, since, until, text;
  std::optional<int> status;
  std::string hold_segment, hold_id;
  unsigned retention_days = 0;
  bool json = false, raw = false, dry_run = false;
  // search s3://bucket/prefix
  std::string endpoint, region = "us-east-1", credentials_file, ca_file;
  bool virtual_host = false;
  CLI::App *search = nullptr, *show = nullptr, *exp = nullptr, *prune = nullptr;
  CLI::App *hold_add = nullptr, *hold_remove = nullptr, *hold_list = nullptr;
};

namespace {

using Flags = ArchiveRetrievalCli::Flags;

void add_filters(CLI::App* sub, Flags& f) {
  sub->add_option("--user", f.user, "exchanges of this user (exact)");
  sub->add_option("--host", f.host, "target host, or a subdomain of it");
  sub->add_option("--since", f.since, "from this time on (RFC 3339, or a date: its start)");
  sub->add_option("--until", f.until, "before this time (RFC 3339, or a date: through its end)");
  sub->add_option("--status", f.status, "response status code")->check(CLI::Range(100, 999));
  sub->add_option("--text", f.text, "in a request or response body (case-insensitive; reads the records)");
}

// The filter, and its description for the export manifest; nullopt after a usage error.
std::optional<std::pair<archive::Filter, nlohmann::ordered_json>> make_filter(const Flags& f) {
  archive::Filter filter;
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  filter.user = f.user;
  filter.host = f.host;
  filter.text = f.text;
  filter.status = f.status;
  if (!f.user.empty()) j["user"] = f.user;
  if (!f.host.empty()) j["host"] = f.host;
  for (auto [flag, value, out, end] : {std::tuple{"--since", &f.since, &filter.since, false},
                                       std::tuple{"--until", &f.until, &filter.until, true}}) {
    if (value->empty()) continue;
    *out = archive::parse_time(*value, end);
    if (!*out) {
      std::cerr << "sightline: " << flag << " " << *value << ": expected RFC 3339 (2026-11-27T10:00:00Z) or a date\n";
      return std::nullopt;
    }
    j[flag + 2] = *value;
  }
  if (f.status) j["status"] = *f.status;
  if (!f.text.empty()) j["text"] = f.text;
  return std::pair{filter, j};
}

std::string who(const std::string& given) {
  if (!given.empty()) return given;
  for (const char* var : {"SUDO_USER", "USER", "LOGNAME"})
    if (const char* v = std::getenv(var); v && *v) return v;
  return "unknown";
}

std::string bare_uuid(const std::string& id) {
  return id.starts_with("<urn:uuid:") && id.ends_with('>') ? id.substr(10, id.size() - 11) : id;
}

// Prints the hits of `result`; segment names prefixed with "<node>/" over S3.
void print_hits(const Flags& f, const archive::SearchResult& result, const std::string& node) {
  for (const auto& w : result.warnings) std::cerr << "warning: " << (node.empty() ? "" : node + ": ") << w << "\n";
  for (const auto& h : result.hits) {
    const auto& e = h.entry;
    if (f.json) {
      nlohmann::ordered_json j = {{"id", e.id},     {"time", e.time},     {"user", e.user},
                                  {"client", e.client}, {"host", e.host}, {"method", e.method},
                                  {"target", e.target},
                                  {"status", e.status ? nlohmann::ordered_json(*e.status) : nlohmann::ordered_json()},
                                  {"segment", (node.empty() ? "" : node + "/") + h.file}};
      std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      continue;
    }
    std::cout << e.time << "  " << bare_uuid(e.id) << "  " << (e.user.empty() ? "-" : e.user) << "  " << e.method
              << " " << e.target << "  " << (e.status ? std::to_string(*e.status) : "-") << "  "
              << (node.empty() ? "" : node + "/") << h.file << "\n";
  }
}

// Over S3: each node's index sidecars, manifests and signatures are
// mirrored into a temporary directory, each segment as a sparse file of its
// sealed size (the search reads the sidecar when it matches the manifest);
// --text needs the bodies, so it downloads the segments too.
int search_s3(const Flags& f, const std::pair<archive::Filter, nlohmann::ordered_json>& filter) {
  namespace fs = std::filesystem;
  std::string why;
  auto co = archive::client_for_s3_url(f.dir, f.endpoint, f.region, f.credentials_file, f.ca_file, f.virtual_host,
                                       &why);
  if (!co) {
    std::cerr << "sightline: " << f.dir << ": " << why << "\n";
    return 2;
  }
  archive::s3::Client client(*co);
  auto listing = archive::list_bucket(client, &why);
  if (!listing) {
    std::cerr << "sightline: " << why << "\n";
    return 2;
  }
  std::string work = (fs::temp_directory_path() / "sightline-search-XXXXXX").string();
  if (!::mkdtemp(work.data())) {
    std::cerr << "sightline: mkdtemp: " << std::strerror(errno) << "\n";
    return 2;
  }
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{work};
  std::size_t hits = 0, segments = 0;
  for (const auto& [node, objs] : listing->by_node()) {
    const std::string dir = (fs::path(work) / node).string();
    std::error_code ec;
    fs::create_directories(dir, ec);
    std::set<std::string> files;
    for (const archive::BucketObject* o : objs) files.insert(o->file);
    for (const archive::BucketObject* o : objs) {
      const bool segment = o->file.ends_with(archive::kSealedSuffix);
      // A segment whose manifest is not in the bucket yet is still being
      // shipped: nothing to search in it (verify s3:// notes it).
      if (segment && !files.count(o->file + std::string(archive::kManifestSuffix))) continue;
      const bool needed = o->file.ends_with(archive::kIndexSuffix) || o->file.ends_with(archive::kManifestSuffix) ||
                          o->file.ends_with(archive::kSignatureSuffix) || (segment && !f.text.empty());
      if (needed) {
        if (auto e = archive::download_first(client, *o, dir)) {
          std::cerr << "sightline: " << *e << "\n";
          return 2;
        }
      } else if (segment) {
        // Sparse: no byte of it is read unless the sidecar is unusable.
        std::ofstream(fs::path(dir) / o->file).close();
        fs::resize_file(fs::path(dir) / o->file, o->first().size, ec);
      }
    }
    auto result = archive::search(dir, filter.first, &why);
    if (!result) {
      std::cerr << "sightline: " << node << ": " << why << "\n";
      return 2;
    }
    print_hits(f, *result, node);
    hits += result->hits.size();
    segments += result->segments;
  }
  std::cerr << hits << " exchanges in " << segments << " segments of " << listing->by_node().size() << " nodes\n";
  return hits == 0 ? 1 : 0;
}

int search(const Flags& f) {
  auto filter = make_filter(f);
  if (!filter) return 2;
  if (f.dir.rfind("s3://", 0) == 0) return search_s3(f, *filter);
  std::string err;
  auto result = archive::search(f.dir, filter->first, &err);
  if (!result) {
    std::cerr << "sightline: " << err << "\n";
    return 2;
  }
  print_hits(f, *result, "");
  std::cerr << result->hits.size() << " exchanges in " << result->segments << " segments\n";
  return result->hits.empty() ? 1 : 0;
}

void print_http(std::string_view block, bool truncated) {
  std::string_view body = archive::http_payload(block);
  std::string_view head = block.substr(0, block.size() - body.size());
  std::cout << head;
  if (body.empty()) return;
  if (archive::printable_text(body)) {
    std::cout << body;
    if (!body.ends_with('\n')) std::cout << "\n";
  } else {
    std::cout << "[" << body.size() << " bytes of binary body, not shown; --raw prints the records]\n";
  }
  if (truncated) std::cout << "[body cut at the archive's size cap]\n";
}

int show(const Flags& f) {
  std::string err;
  sightline::tls::EvpPkeyPtr key;
  if (!f.key.empty() && !(key = archive::load_verify_key(f.key, &err))) {
    std::cerr << "sightline: " << err << "\n";
    return 2;
  }
  auto hit = archive::find_exchange(f.dir, f.id, &err);
  if (!hit) {
    std::cerr << "sightline: " << err << "\n";
    return 2;
  }
  std::optional<archive::SealedManifest> sealed;
  std::string untrusted = "not checked (no --key)";
  if (archive::parse_segment_name(hit->file)->open) untrusted = "open segment: not sealed or signed yet";
  else if (key) sealed = archive::SealedManifest::load(f.dir, hit->file, key.get(), &untrusted);
  auto ex = archive::read_exchange(f.dir, *hit, sealed ? &*sealed : nullptr, &err);
  if (!ex) {
    std::cerr << "sightline: " << err << "\n";
    return 2;
  }
  bool intact = ex->checked && ex->integrity.empty();
  std::string integrity = intact ? "each record matches the signed manifest (digest, seq, chain)"
                          : ex->checked ? ex->integrity
                                        : untrusted + (ex->integrity.empty() ? "" : "; " + ex->integrity);
  if (f.raw) {
    for (const auto& r : ex->records) std::cout << r.data;
  } else {
    const auto& e = hit->entry;
    std::cout << "exchange   " << e.id << "\nsegment    " << hit->file << "\ntime       " << e.time
              << "\nuser       " << (e.user.empty() ? "-" : e.user) << "\nclient     " << e.client << "\ntarget     "
              << e.method << " " << e.target << "\nintegrity  " << integrity << "\n";
    for (const auto& r : ex->records) {
      auto rec = archive::parse_record(r.data, nullptr);
      std::cout << "\n== " << r.where.type << " " << r.where.id << " (record " << r.where.seq << ")\n";
      if (!rec) {
        std::cout << "[unparsable record]\n";
      } else if (r.where.type == "metadata") {
        auto j = nlohmann::json::parse(rec->block, nullptr, false);
        std::cout << (j.is_discarded() ? std::string(rec->block) : j.dump(2)) << "\n";
      } else {
        print_http(rec->block, rec->header("WARC-Truncated") != nullptr);
      }
    }
  }
  if (!intact && key) std::cerr << "sightline: integrity: " << integrity << "\n";
  return intact || !key ? 0 : 1;
}

int do_export(const Flags& f) {
  auto filter = make_filter(f);
  if (!filter) return 2;
  std::string err;
  auto key = archive::load_signing_key(f.key, &err);
  if (!key) {
    std::cerr << "sightline: " << err << "\n";
    return 2;
  }
  archive::ExportOptions opts;
  opts.dir = f.dir;
  opts.out = f.out;
  opts.filter = filter->first;
  opts.filter_json = filter->second;
  opts.signing_key = key.get();
  auto r = archive::export_archive(opts, &err);
  if (!r) {
    std::cerr << "sightline: " << err << "\n";
    return err.find("nothing") != std::string::npos ? 1 : 2;
  }
  std::cout << "exported " << r->exchanges << " exchanges (" << r->records << " records) from " << r->sources.size()
            << " segments to " << f.out << "; signed manifest " << f.out << archive::kManifestSuffix << "\n";
  if (r->skipped_open)
    std::cerr << "note: " << r->skipped_open << " matching exchanges in open segments were not exported (not sealed yet)\n";
  return 0;
}

int prune(const Flags& f) {
  std::string err;
  auto key = archive::load_signing_key(f.key, &err);
  if (!key) {
    std::cerr << "sightline: " << err << "\n";
    return 2;
  }
  archive::PruneOptions opts;
  opts.dir = f.dir;
  opts.retention_days = f.retention_days;
  opts.dry_run = f.dry_run;
  opts.signing_key = key.get();
  auto r = archive::prune(opts, &err);
  if (!r) {
    std::cerr << "sightline: " << err << "\n";
    return 2;
  }
  for (const auto& t : r->deleted) std::cout << archive::deletion_log_line(t, f.dry_run) << "\n";
  for (const auto& h : r->held) std::cerr << "held: " << h << "\n";
  for (const auto& s : r->skipped) std::cerr << "skipped: " << s << "\n";
  std::cerr << r->deleted.size() << (f.dry_run ? " segments would be deleted, " : " segments deleted, ")
            << r->held.size() << " held\n";
  return r->skipped.empty() ? 0 : 1;
}

int hold(const Flags& f) {
  std::string err;
  if (f.hold_list->parsed()) {
    auto holds = archive::load_holds(f.dir, &err);
    if (!holds) {
      std::cerr << "sightline: " << err << "\n";
      return 2;
    }
    for (const auto& h : *holds) {
      if (f.json) {
        std::cout << archive::hold_json(h).dump() << "\n";
        continue;
      }
      std::cout << h.id << "  " << (h.segment.empty() ? "" : "segment " + h.segment + "  ")
                << (h.user.empty() ? "" : "user " + h.user + "  ")
                << (h.since.empty() && h.until.empty() ? "" : "[" + h.since + " .. " + h.until + ")  ") << "by "
                << h.by << " " << h.created << ": " << h.reason << "\n";
    }
    return 0;
  }
  nlohmann::ordered_json log;
  if (f.hold_add->parsed()) {
    archive::Hold h{{}, f.hold_segment, f.user, f.since, f.until, f.reason, who(f.by), {}};
    auto added = archive::add_hold(f.dir, h, &err);
    if (!added) {
      std::cerr << "sightline: " << err << "\n";
      return 2;
    }
    log = {{"event", "archive_hold_added"}};
    log.update(archive::hold_json(*added));
  } else {
    auto removed = archive::remove_hold(f.dir, f.hold_id, &err);
    if (!removed) {
      std::cerr << "sightline: " << err << "\n";
      return 2;
    }
    log = {{"event", "archive_hold_removed"}};
    log.update(archive::hold_json(*removed));
    log["removed_by"] = who(f.by);
    log["removal_reason"] = f.reason;
  }
  std::cout << log.dump() << "\n";
  return 0;
}

}  // namespace

ArchiveRetrievalCli::ArchiveRetrievalCli(CLI::App* arch) : f_(std::make_unique<Flags>()) {
  Flags& f = *f_;
  f.search = arch->add_subcommand("search", "list archived exchanges matching all given filters");
  f.search->add_option("dir", f.dir, "archive directory, or s3://bucket/prefix (shipped segments)")->required();
  add_filters(f.search, f);
  f.search->add_flag("--json", f.json, "one JSON object per line");
  f.search->add_option("--endpoint", f.endpoint,
                       "for s3://: the store's URL (default https://s3.REGION.amazonaws.com)");
  f.search->add_option("--region", f.region, "for s3://: SigV4 region (default us-east-1)");
  f.search->add_option("--credentials-file", f.credentials_file,
                       "for s3://: access key and secret (default: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)");
  f.search->add_option("--ca-file", f.ca_file, "for s3://: CA bundle of an https endpoint");
  f.search->add_flag("--virtual-host", f.virtual_host, "for s3://: bucket in the host name");

  f.show = arch->add_subcommand("show", "print one exchange: request, response, metadata");
  f.show->add_option("dir", f.dir, "archive directory")->required();
  f.show->add_option("id", f.id, "exchange id (uuid, or 8+ leading characters)")->required();
  f.show->add_option("--key", f.key, "archive public key: check the records against the signed manifest");
  f.show->add_flag("--raw", f.raw, "print the uncompressed WARC records");

  f.exp = arch->add_subcommand("export", "write matching exchanges to a new signed .warc.gz");
  f.exp->add_option("dir", f.dir, "archive directory")->required();
  add_filters(f.exp, f);
  f.exp->add_option("--out", f.out, "FILE.warc.gz to create (never overwritten)")->required();
  f.exp->add_option("--key", f.key, "archive private key: signs the export manifest")->required();

  f.prune = arch->add_subcommand("prune", "delete sealed segments past retention, except those under legal hold");
  f.prune->add_option("dir", f.dir, "archive directory")->required();
  f.prune->add_option("--retention-days", f.retention_days, "keep segments sealed within this many days")
      ->required()
      ->check(CLI::Range(1u, 36500u));
  f.prune->add_option("--key", f.key, "archive private key: signs the tombstones (pruned.json)")->required();
  f.prune->add_flag("--dry-run", f.dry_run, "only list what would be deleted");

  auto* hold = arch->add_subcommand("hold", "legal holds: segments they protect are never pruned");
  hold->require_subcommand(1);
  f.hold_add = hold->add_subcommand("add", "place a hold (by segment, user and/or time range)");
  f.hold_add->add_option("dir", f.dir, "archive directory")->required();
  f.hold_add->add_option("--segment", f.hold_segment, "a sealed segment's file name");
  f.hold_add->add_option("--user", f.user, "every segment with exchanges of this user");
  f.hold_add->add_option("--since", f.since, "of exchanges from this time on (RFC 3339 or date)");
  f.hold_add->add_option("--until", f.until, "of exchanges before this time (RFC 3339, or a date: through its end)");
  f.hold_add->add_option("--reason", f.reason, "why (case or matter reference)")->required();
  f.hold_add->add_option("--by", f.by, "who places it (default: $SUDO_USER or $USER)");
  f.hold_remove = hold->add_subcommand("remove", "lift a hold");
  f.hold_remove->add_option("dir", f.dir, "archive directory")->required();
  f.hold_remove->add_option("id", f.hold_id, "hold id (from hold list)")->required();
  f.hold_remove->add_option("--reason", f.reason, "why it is lifted");
  f.hold_remove->add_option("--by", f.by, "who lifts it (default: $SUDO_USER or $USER)");
  f.hold_list = hold->add_subcommand("list", "list holds");
  f.hold_list->add_option("dir", f.dir, "archive directory")->required();
  f.hold_list->add_flag("--json", f.json, "one JSON object per line");
}

ArchiveRetrievalCli::~ArchiveRetrievalCli() = default;

std::optional<int> ArchiveRetrievalCli::run() const {
  const Flags& f = *f_;
  if (f.search->parsed()) return search(f);
  if (f.show->parsed()) return show(f);
  if (f.exp->parsed()) return do_export(f);
  if (f.prune->parsed()) return prune(f);
  if (f.hold_add->parsed() || f.hold_remove->parsed() || f.hold_list->parsed()) return hold(f);
  return std::nullopt;
}

}  // namespace sightline::app
