#include "archive/retention.h"

#include "archive/index.h"
#include "archive/keys.h"
#include "archive/verify.h"
#include "core/log.h"
#include "hooks/pcap.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <set>

namespace sightline::archive {

namespace {

constexpr std::string_view kHoldsFormat = "sightline-archive-holds/1";
constexpr std::string_view kPrunedFormat = "sightline-archive-pruned/1";
// The next pruned.json, written before its signature (see write_tombstones).
constexpr std::string_view kPrunedNext = "pruned.json.next";

std::string path_in(const std::string& dir, std::string_view name) { return dir + "/" + std::string(name); }

Hold hold_from_json(const nlohmann::json& j) {
  auto s = [&](const char* k) { return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : std::string(); };
  return {s("id"), s("segment"), s("user"), s("since"), s("until"), s("reason"), s("by"), s("created")};
}

std::optional<std::string> save_holds(const std::string& dir, const std::vector<Hold>& holds) {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const auto& h : holds) list.push_back(hold_json(h));
  nlohmann::ordered_json j = {{"format", kHoldsFormat}, {"holds", std::move(list)}};
  if (auto e = write_file_durably(path_in(dir, kHoldsFile), j.dump(1) + "\n", 0640)) return e;
  fsync_dir(dir);
  return std::nullopt;
}

Tombstone tombstone_from_json(const nlohmann::json& j) {
  Tombstone t;
  t.segment = j.at("segment").get<std::string>();
  t.writer = j.at("writer").get<std::string>();
  t.segment_seq = j.at("segment_seq").get<std::uint64_t>();
  t.chain_start = j.at("chain_start").get<std::string>();
  t.chain_head = j.at("chain_head").get<std::string>();
  t.manifest_sha256 = j.at("manifest_sha256").get<std::string>();
  t.sealed = j.at("sealed").get<std::string>();
  t.records = j.at("records").get<std::uint64_t>();
  t.deleted = j.at("deleted").get<std::string>();
  t.reason = j.at("reason").get<std::string>();
  return t;
}

std::optional<std::vector<Tombstone>> parse_tombstones(const std::string& text, std::string* why) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  try {
    if (!j.is_object() || j.at("format") != kPrunedFormat) {
      if (why) *why = "pruned.json: unknown format";
      return std::nullopt;
    }
    std::vector<Tombstone> out;
    for (const auto& e : j.at("entries")) out.push_back(tombstone_from_json(e));
    return out;
  } catch (const nlohmann::json::exception& e) {
    if (why) *why = std::string("pruned.json field: ") + e.what();
    return std::nullopt;
  }
}

// pruned.json and its signature cannot be replaced in one step. The new text
// goes to pruned.json.next first, then the signature, then the rename: a
// crash in between leaves a signature that verifies .next, which
// load_tombstones accepts (and the next prune completes the rename).
std::optional<std::string> write_tombstones(const std::string& dir, const std::vector<Tombstone>& entries,
                                            EVP_PKEY* key) {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const auto& t : entries) list.push_back(tombstone_json(t));
  nlohmann::ordered_json j = {{"format", kPrunedFormat}, {"key_fingerprint", key_fingerprint(key)}, {"entries", list}};
  std::string text = j.dump(1) + "\n";
  std::string err;
  auto sig = sign_base64(key, text, &err);
  if (!sig) return "pruned.json: " + err;
  if (auto e = write_file_durably(path_in(dir, kPrunedNext), text)) return e;
  if (auto e = write_file_durably(path_in(dir, kPrunedSignature), *sig + "\n")) return e;
  if (::rename(path_in(dir, kPrunedNext).c_str(), path_in(dir, kPrunedFile).c_str()) != 0)
    return errno_text("rename", path_in(dir, kPrunedNext), errno);
  if (!fsync_dir(dir)) return errno_text("fsync", dir, errno);
  return std::nullopt;
}

// Whether any exchange of the segment falls under a user/time-range hold.
bool index_held(const SegmentIndex& index, const Hold& h) {
  Filter f;
  f.user = h.user;
  if (!h.since.empty()) f.since = parse_time(h.since);
  if (!h.until.empty()) f.until = parse_time(h.until, true);
  for (const auto& e : index.entries)
    if (index_matches(e, f)) return true;
  return false;
}

std::int64_t micros_of(WallClock::time_point t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

std::vector<std::string> segment_side_files(const std::string& dir, const std::string& segment) {
  std::string base = path_in(dir, segment);
  // The segment first: once it is gone the deletion has happened; the rest is cleanup.
  return {base, base + std::string(kIndexSuffix), base + std::string(kRecordsSuffix),
          base + std::string(kSignatureSuffix), base + std::string(kManifestSuffix)};
}

}  // namespace

nlohmann::ordered_json hold_json(const Hold& h) {
  nlohmann::ordered_json j = {{"id", h.id}};
  if (!h.segment.empty()) j["segment"] = h.segment;
  if (!h.user.empty()) j["user"] = h.user;
  if (!h.since.empty()) j["since"] = h.since;
  if (!h.until.empty()) j["until"] = h.until;
  j["reason"] = h.reason;
  j["by"] = h.by;
  j["created"] = h.created;
  return j;
}

std::optional<std::vector<Hold>> load_holds(const std::string& dir, std::string* error) {
  std::string p = path_in(dir, kHoldsFile);
  if (::access(p.c_str(), F_OK) != 0) return std::vector<Hold>();
  auto text = read_text_file(p);
  auto j = text ? nlohmann::json::parse(*text, nullptr, false) : nlohmann::json();
  if (!j.is_object() || j.value("format", "") != kHoldsFormat || !j.contains("holds") || !j["holds"].is_array()) {
    // Unreadable holds must stop a prune, never let it delete held data.
    if (error) *error = p + ": unreadable or not a holds file";
    return std::nullopt;
  }
  std::vector<Hold> out;
  for (const auto& h : j["holds"]) out.push_back(hold_from_json(h));
  return out;
}

std::optional<Hold> add_hold(const std::string& dir, Hold hold, std::string* error) {
  auto fail = [&](std::string msg) {
    if (error) *error = std::move(msg);
    return std::optional<Hold>();
  };
  if (hold.reason.empty()) return fail("a hold needs a reason");
  if (hold.segment.empty() && hold.user.empty() && hold.since.empty() && hold.until.empty())
    return fail("a hold needs --segment, --user or a time range");
  if (!hold.segment.empty() && (!parse_segment_name(hold.segment) || parse_segment_name(hold.segment)->open))
    return fail("--segment " + hold.segment + ": not a sealed segment name");
  if (!hold.since.empty() && !parse_time(hold.since)) return fail("--since " + hold.since + ": not RFC 3339 or a date");
  if (!hold.until.empty() && !parse_time(hold.until)) return fail("--until " + hold.until + ": not RFC 3339 or a date");
  auto holds = load_holds(dir, error);
  if (!holds) return std::nullopt;
  unsigned char rnd[4];
  if (RAND_bytes(rnd, sizeof rnd) != 1) return fail("hold id: " + tls::drain_errors());
  hold.id = to_hex(std::string_view(reinterpret_cast<const char*>(rnd), sizeof rnd));
  hold.created = warc_date(WallClock::now());
  holds->push_back(hold);
  if (auto e = save_holds(dir, *holds)) return fail(*e);
  return hold;
}

std::optional<Hold> remove_hold(const std::string& dir, const std::string& id, std::string* error) {
  auto holds = load_holds(dir, error);
  if (!holds) return std::nullopt;
  auto it = std::find_if(holds->begin(), holds->end(), [&](const Hold& h) { return h.id == id; });
  if (it == holds->end()) {
    if (error) *error = "no hold " + id + " in " + dir;
    return std::nullopt;
  }
  Hold removed = *it;
  holds->erase(it);
  if (auto e = save_holds(dir, *holds)) {
    if (error) *error = *e;
    return std::nullopt;
  }
  return removed;
}

nlohmann::ordered_json tombstone_json(const Tombstone& t) {
  return {{"segment", t.segment},         {"writer", t.writer},   {"segment_seq", t.segment_seq},
          {"chain_start", t.chain_start}, {"chain_head", t.chain_head}, {"manifest_sha256", t.manifest_sha256},
          {"sealed", t.sealed},           {"records", t.records}, {"deleted", t.deleted},
          {"reason", t.reason}};
}

std::optional<Tombstones> load_tombstones(const std::string& dir, EVP_PKEY* key, std::string* error) {
  Tombstones out;
  auto text = read_text_file(path_in(dir, kPrunedFile));
  auto next = read_text_file(path_in(dir, kPrunedNext));
  if (!text && !next) return out;
  auto sig = read_text_file(path_in(dir, kPrunedSignature));
  std::optional<std::string> good;
  if (sig && text && verify_base64(key, *text, *sig)) good = text;
  else if (sig && next && verify_base64(key, *next, *sig)) good = next;  // a prune stopped before its rename
  if (!good) {
    if (error) *error = !sig ? "pruned.json: signature file missing; its tombstones are not trusted"
                             : "pruned.json: signature does not verify; its tombstones are not trusted";
    return std::nullopt;
  }
  auto entries = parse_tombstones(*good, error);
  if (!entries) return std::nullopt;
  out.entries = std::move(*entries);
  out.present = true;
  return out;
}

std::string deletion_log_line(const Tombstone& t, bool dry_run) {
  nlohmann::ordered_json j = {{"event", dry_run ? "archive_prune_candidate" : "archive_pruned"},
                              {"segment", t.segment},
                              {"sealed", t.sealed},
                              {"chain_head", t.chain_head},
                              {"records", t.records},
                              {"manifest_sha256", t.manifest_sha256},
                              {"deleted", t.deleted},
                              {"reason", t.reason}};
  return j.dump();
}

std::optional<PruneResult> prune(const PruneOptions& opts, std::string* error) {
  auto fail = [&](std::string msg) {
    if (error) *error = std::move(msg);
    return std::optional<PruneResult>();
  };
  if (!opts.signing_key) return fail("prune: no signing key");
  PruneResult result;
  if (opts.retention_days == 0 && !opts.also_delete) return result;
  const std::string& dir = opts.dir;
  // Two prunes (the proxy's and an operator's) must not interleave their
  // read-modify-write of pruned.json. A dry run on a read-only copy needs no lock.
  hooks::pcap::UniqueFd lock(::open(path_in(dir, ".prune.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640));
  if (!lock && !opts.dry_run) return fail(errno_text("create", path_in(dir, ".prune.lock"), errno));
  if (lock && ::flock(lock.get(), LOCK_EX) != 0) return fail(errno_text("lock", path_in(dir, ".prune.lock"), errno));

  auto tombstones = load_tombstones(dir, opts.signing_key, error);
  if (!tombstones) return std::nullopt;  // never add to tombstones that do not verify
  auto holds = load_holds(dir, error);
  if (!holds) return std::nullopt;
  auto files = segment_files(dir, error);
  if (!files) return std::nullopt;

  std::set<std::string> tombstoned;
  for (const auto& t : tombstones->entries) tombstoned.insert(t.segment);
  // Finish a prune that stopped after its tombstones were written.
  if (!opts.dry_run) {
    if (::access(path_in(dir, kPrunedNext).c_str(), F_OK) == 0 &&
        ::rename(path_in(dir, kPrunedNext).c_str(), path_in(dir, kPrunedFile).c_str()) != 0)
      return fail(errno_text("rename", path_in(dir, kPrunedNext), errno));
    for (const auto& t : tombstones->entries)
      for (const auto& f : segment_side_files(dir, t.segment)) ::unlink(f.c_str());
  }

  std::map<std::string, std::string> latest;  // writer -> its latest sealed segment
  for (const auto& f : *files) {
    auto seg = parse_segment_name(f);
    if (!seg->open) latest[seg->writer] = f;  // files are in writer, seq order
  }
  std::int64_t cutoff = micros_of(opts.now) - static_cast<std::int64_t>(opts.retention_days) * 86400 * 1000000;
  std::vector<Tombstone> fresh;
  for (const auto& f : *files) {
    auto seg = parse_segment_name(f);
    if (seg->open || latest[seg->writer] == f || tombstoned.count(f)) continue;
    FindingKind kind{};
    std::string why;
    auto m = load_trusted_manifest(dir, f, opts.signing_key, &kind, &why);
    if (!m) {
      result.skipped.push_back(f + ": " + why);
      continue;
    }
    auto sealed = parse_time(m->sealed);
    if (!sealed) {
      result.skipped.push_back(f + ": manifest's sealed time '" + m->sealed + "' unreadable");
      continue;
    }
    std::optional<std::string> other_reason;
    if (opts.retention_days == 0 || *sealed >= cutoff) {
      if (opts.also_delete) other_reason = opts.also_delete(f);
      if (!other_reason) continue;
    }
    std::optional<SegmentIndex> index;
    bool index_failed = false;
    auto applies = [&](const Hold& h) {
      if (!h.segment.empty() && h.segment != f) return false;
      if (h.user.empty() && h.since.empty() && h.until.empty()) return true;
      if (!index && !index_failed) {
        auto loaded = load_index(dir, f, &why);
        if (loaded) index = std::move(loaded->index);
        else index_failed = true;
      }
      return !index || index_held(*index, h);  // no index: keep, when in doubt
    };
    auto it = std::find_if(holds->begin(), holds->end(), applies);
    const Hold* held = it == holds->end() ? nullptr : &*it;
    if (index_failed) result.skipped.push_back(f + ": no index for the hold check: " + why);
    if (held) {
      result.held.push_back(f + ": hold " + held->id + " (" + held->reason + ")");
      continue;
    }
    auto text = read_text_file(path_in(dir, f + std::string(kManifestSuffix)));
    Tombstone t;
    t.segment = f;
    t.writer = m->writer;
    t.segment_seq = m->segment_seq;
    t.chain_start = sha256_field(m->chain_start);
    t.chain_head = sha256_field(m->chain_head);
    t.manifest_sha256 = text ? to_hex(sha256(*text)) : std::string();
    t.sealed = m->sealed;
    t.records = m->record_count;
    t.deleted = warc_date(opts.now);
    t.reason = other_reason ? *other_reason : "retention " + std::to_string(opts.retention_days) + " days";
    fresh.push_back(std::move(t));
  }
  if (opts.dry_run || fresh.empty()) {
    result.deleted = std::move(fresh);
    return result;
  }
  std::vector<Tombstone> all = tombstones->entries;
  all.insert(all.end(), fresh.begin(), fresh.end());
  // Tombstones first: a deletion without one would verify as tampering.
  if (auto e = write_tombstones(dir, all, opts.signing_key)) return fail(*e);
  for (auto& t : fresh) {
    bool gone = true;
    for (const auto& f : segment_side_files(dir, t.segment)) {
      if (::unlink(f.c_str()) != 0 && errno != ENOENT) {
        // WORM storage refuses until its own retention ends; verify still
        // accepts a tombstoned segment that remains.
        result.skipped.push_back(t.segment + ": " + errno_text("unlink", f, errno));
        gone = false;
        break;
      }
    }
    if (gone) result.deleted.push_back(std::move(t));
  }
  fsync_dir(dir);
  return result;
}

void log_prune_result(const PruneResult& r) {
  for (const auto& t : r.deleted)
    log::emit(log::Line(log::Level::info, "archive_pruned")
                  .str("segment", t.segment)
                  .str("sealed", t.sealed)
                  .num("records", t.records)
                  .str("chain_head", t.chain_head)
                  .str("manifest_sha256", t.manifest_sha256)
                  .str("reason", t.reason));
  for (const auto& h : r.held) log::emit(log::Line(log::Level::info, "archive_prune_held").str("detail", h));
  for (const auto& s : r.skipped) log::emit(log::Line(log::Level::warn, "archive_prune_skipped").str("detail", s));
}

}  // namespace sightline::archive
