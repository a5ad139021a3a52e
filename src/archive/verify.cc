#include "archive/verify.h"

#include "archive/export.h"
#include "archive/format.h"
#include "archive/keys.h"
#include "archive/retention.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <unordered_map>

namespace sightline::archive {

namespace {

struct SegmentFiles {
  std::string name;  // sealed name
  bool sealed_file = false;
  bool open_file = false;
  bool manifest = false;
};

// Where the previous segment of a writer left the chain.
struct Link {
  std::uint64_t seq = 0;
  std::string name;
  std::optional<Digest> head = kZeroChain;  // nullopt: unknown, the next link is not checked
};

// Indices (into `v`) of one longest strictly increasing subsequence.
std::vector<std::size_t> longest_increasing(const std::vector<std::size_t>& v) {
  std::vector<std::size_t> tails, prev(v.size(), SIZE_MAX);
  for (std::size_t i = 0; i < v.size(); ++i) {
    auto it = std::lower_bound(tails.begin(), tails.end(), v[i], [&](std::size_t t, std::size_t x) { return v[t] < x; });
    if (it != tails.begin()) prev[i] = *(it - 1);
    if (it == tails.end()) tails.push_back(i);
    else *it = i;
  }
  std::vector<std::size_t> out;
  for (std::size_t i = tails.empty() ? SIZE_MAX : tails.back(); i != SIZE_MAX; i = prev[i]) out.push_back(i);
  std::reverse(out.begin(), out.end());
  return out;
}

class Verifier {
 public:
  Verifier(std::string dir, EVP_PKEY* key) : dir_(std::move(dir)), key_(key) {}

  // Tombstones of segments deleted by retention (pruned.json, signature checked).
  void set_tombstones(const std::vector<Tombstone>& entries) {
    for (const auto& t : entries) pruned_[{t.writer, t.segment_seq}] = t;
  }
  void add_problem(FindingKind kind, const std::string& file, std::string detail) { add(kind, file, std::move(detail)); }

  void writer(const std::string& writer, const std::map<std::uint64_t, SegmentFiles>& segments) {
    Link prev;
    for (const auto& [seq, files] : segments) {
      if (seq != prev.seq + 1 && pruned_gap(writer, seq, prev)) {
        // Every missing segment was deleted by retention: prev now is the last of them.
      } else if (seq != prev.seq + 1) {
        std::string detail = seq == prev.seq + 2
                                 ? "segment " + std::to_string(prev.seq + 1) + " of writer " + writer + " is missing"
                                 : "segments " + std::to_string(prev.seq + 1) + " to " + std::to_string(seq - 1) +
                                       " of writer " + writer + " are missing";
        auto text = read_text_file(path(files.name + std::string(kManifestSuffix)));
        auto m = text ? parse_manifest(*text, nullptr) : std::nullopt;
        if (m && !m->previous_segment.empty()) detail += " (this one follows " + m->previous_segment + ")";
        add(FindingKind::segment_deleted, files.name, detail);
        prev.head.reset();
      }
      prev.seq = seq;
      if (files.open_file) {
        ++report_.segments;
        open_segment(files.name + ".open", prev.head);
        prev.head.reset();
      } else if (!files.sealed_file && pruned_.count({writer, seq})) {
        // A prune that stopped between its tombstone and the last file.
        const Tombstone& t = pruned_.at({writer, seq});
        add(FindingKind::pruned, files.name, tombstone_detail(t) + "; its manifest remains (interrupted prune)");
        prev.head = parse_sha256_field(t.chain_head);
        prev.name = files.name;
      } else if (!files.sealed_file) {
        add(FindingKind::segment_deleted, files.name, "segment file is missing; its manifest remains");
        auto m = trusted_manifest(files.name, false);
        prev.head = m ? std::optional<Digest>(m->chain_head) : std::nullopt;
        prev.name = files.name;
      } else {
        ++report_.segments;
        sealed_segment(files, prev);
      }
    }
  }

  Report take() { return std::move(report_); }

  // An export: its signed export manifest is the ground truth for its
  // records, whose chain values belong to the original archive.
  void export_file(const std::string& name) {
    ++report_.segments;
    auto text = read_text_file(path(name + std::string(kManifestSuffix)));
    auto sig = read_text_file(path(name + std::string(kSignatureSuffix)));
    if (!text) {
      add(FindingKind::missing_manifest, name, "not a segment name, and no export manifest");
      return;
    }
    if (!sig) {
      add(FindingKind::bad_signature, name, "export signature file missing");
      return;
    }
    if (!verify_base64(key_, *text, *sig)) {
      add(FindingKind::bad_signature, name, "export manifest signature does not verify: manifest or signature modified");
      return;
    }
    std::string why;
    auto em = parse_export_manifest(*text, &why);
    if (!em) {
      add(FindingKind::bad_manifest, name, why);
      return;
    }
    if (em->file != name) {
      add(FindingKind::bad_manifest, name, "signed export manifest belongs to " + em->file);
      return;
    }
    std::string err;
    auto file = MappedFile::open(path(name), &err);
    if (!file) {
      add(FindingKind::modified, name, "export unreadable: " + err);
      return;
    }
    Manifest m;
    m.file_size = em->file_size;
    for (const auto& e : em->records) {
      if (chain_next(e.chain_prev, e.record.digest) != e.record.chain)
        add_record(FindingKind::bad_manifest, name, e.record.seq, e.record.offset, e.record.id,
                   "export manifest: chain value does not follow from chain_prev and digest");
      m.records.push_back(e.record);
    }
    std::size_t before = report_.findings.size();
    compare_records(m, name, file->bytes());
    cross_check_sources(*em, name);
    if (report_.findings.size() == before) {
      std::string_view bytes = file->bytes();
      if (bytes.size() != em->file_size || to_hex(sha256(bytes)) != em->file_sha256)
        add(FindingKind::modified, name, "file differs from its sealed hash although every record matches");
    }
  }

 private:
  std::string path(std::string_view name) const { return dir_ + "/" + std::string(name); }

  Finding& add(FindingKind kind, const std::string& segment, std::string detail) {
    report_.findings.push_back({kind, segment, std::nullopt, std::nullopt, {}, std::move(detail)});
    return report_.findings.back();
  }
  void add_record(FindingKind kind, const std::string& segment, std::optional<std::uint64_t> seq,
                  std::uint64_t offset, const std::string& id, std::string detail) {
    Finding& f = add(kind, segment, std::move(detail));
    f.seq = seq;
    f.offset = offset;
    f.record_id = id;
  }

  // The manifest if its signature verifies by the archive key; findings otherwise.
  std::optional<Manifest> trusted_manifest(const std::string& name, bool report) {
    FindingKind kind{};
    std::string why;
    auto m = load_trusted_manifest(dir_, name, key_, &kind, &why);
    if (!m && report) add(kind, name, why);
    return m;
  }

  // Records of a segment checked on their own, and their chain from `start`.
  // Returns the last chain value seen.
  std::optional<Digest> check_chain(const std::string& segment, std::string_view bytes, std::optional<Digest> start,
                                    MemberScan& scan) {
    scan = scan_members(bytes);
    std::optional<Digest> cur = start;
    for (const auto& m : scan.members) {
      RecordInfo r = inspect_record(m);
      ++report_.records;
      if (!r.problem.empty()) {
        add_record(FindingKind::modified, segment, r.seq, r.offset, r.id, r.problem);
      } else if (cur) {
        if (auto why = chain_link_problem(r, *cur)) add_record(FindingKind::chain_broken, segment, r.seq, r.offset, r.id, *why);
      }
      if (r.chain) cur = r.chain;
    }
    return cur;
  }

  void open_segment(const std::string& name, std::optional<Digest> start) {
    std::string err;
    auto file = MappedFile::open(path(name), &err);
    if (!file) {
      add(FindingKind::unsealed, name, "open segment unreadable: " + err);
      return;
    }
    MemberScan scan;
    check_chain(name, file->bytes(), start, scan);
    std::string detail = "open segment (live writer, or crashed before sealing): " +
                         std::to_string(scan.members.size()) + " records, not yet signed";
    if (!scan.complete())
      detail += "; torn tail of " + std::to_string(scan.file_size - scan.good_end) +
                " bytes, cut when its writer restarts";
    add(FindingKind::unsealed, name, detail);
  }

  void sealed_segment(const SegmentFiles& files, Link& prev) {
    const std::string& name = files.name;
    std::string err;
    auto file = MappedFile::open(path(name), &err);
    if (!file) {
      add(FindingKind::modified, name, "segment unreadable: " + err);
      prev.head.reset();
      return;
    }
    std::optional<Manifest> m;
    if (!files.manifest) add(FindingKind::missing_manifest, name, "sealed segment without manifest");
    else m = trusted_manifest(name, true);
    if (!m) {
      // Untrusted: the records can only be checked against each other.
      MemberScan scan;
      prev.head = check_chain(name, file->bytes(), prev.head, scan);
      if (!scan.complete())
        add(FindingKind::truncated, name, "unreadable from offset " + std::to_string(scan.good_end) + ": " + scan.tail_error);
      prev.name = name;
      return;
    }
    std::size_t before = report_.findings.size();
    manifest_consistency(*m, name, prev);
    compare_records(*m, name, file->bytes());
    if (report_.findings.size() == before) {
      std::string_view bytes = file->bytes();
      if (bytes.size() != m->file_size || to_hex(sha256(bytes)) != m->file_sha256)
        add(FindingKind::modified, name, "file differs from its sealed hash although every record matches");
    }
    prev.name = name;
    prev.head = m->chain_head;
  }

  void manifest_consistency(const Manifest& m, const std::string& name, const Link& prev) {
    auto seg = parse_segment_name(name);
    if (m.segment != name || !seg || m.writer != seg->writer || m.segment_seq != seg->seq) {
      add(FindingKind::bad_manifest, name, "signed manifest belongs to segment " + m.segment);
      return;
    }
    Digest cur = m.chain_start;
    for (const auto& r : m.records) {
      cur = chain_next(cur, r.digest);
      if (cur != r.chain) {
        add(FindingKind::bad_manifest, name, "manifest chain inconsistent at record " + std::to_string(r.seq));
        return;
      }
    }
    if (cur != m.chain_head) add(FindingKind::bad_manifest, name, "manifest chain head inconsistent");
    if (prev.head && (m.chain_start != *prev.head || m.previous_segment != prev.name))
      add(FindingKind::chain_broken, name,
          "does not continue the chain of " + (prev.name.empty() ? std::string("the writer's start") : prev.name) +
              " (manifest names " + (m.previous_segment.empty() ? std::string("none") : m.previous_segment) + ")");
  }

  // Classifies the differences between the sealed record list and the file.
  void compare_records(const Manifest& m, const std::string& name, std::string_view bytes) {
    const auto& listed = m.records;
    std::vector<RecordInfo> actual;
    struct Unreadable {
      std::uint64_t from, to;
      std::string why;
    };
    std::vector<Unreadable> unreadable;
    for (std::uint64_t off = 0; off < bytes.size();) {
      MemberScan scan = scan_members(bytes, off);
      for (const auto& mem : scan.members) actual.push_back(inspect_record(mem));
      if (scan.complete()) break;
      // Resynchronise at the next member the manifest lists.
      std::uint64_t next = bytes.size();
      for (const auto& r : listed) {
        if (r.offset > scan.good_end) {
          next = std::min(next, r.offset);
        }
      }
      unreadable.push_back({scan.good_end, next, scan.tail_error});
      off = next;
    }
    report_.records += actual.size();

    std::unordered_map<std::string, std::size_t> by_id;
    for (std::size_t i = 0; i < listed.size(); ++i) by_id.emplace(listed[i].id, i);
    std::vector<bool> accounted(listed.size(), false);
    std::vector<std::size_t> order;  // listed index of each matched record, in file order
    std::vector<const RecordInfo*> matched;
    std::optional<std::uint64_t> last_seq;
    for (const auto& r : actual) {
      auto it = by_id.find(r.id);
      if (it == by_id.end() || accounted[it->second]) {
        add_record(FindingKind::inserted, name, r.seq, r.offset, r.id,
                   "not in the sealed manifest" +
                       (last_seq ? " (after record " + std::to_string(*last_seq) + ")" : std::string(" (first)")));
        continue;
      }
      const ManifestRecord& want = listed[it->second];
      accounted[it->second] = true;
      order.push_back(it->second);
      matched.push_back(&r);
      last_seq = want.seq;
      std::string why = r.problem;
      if (why.empty() && r.digest != want.digest) why = "content differs from the sealed record digest";
      if (why.empty() && (r.chain != want.chain || r.type != want.type || r.seq != want.seq))
        why = "sightline fields differ from the sealed record";
      if (!why.empty()) add_record(FindingKind::modified, name, want.seq, r.offset, r.id, why);
    }
    auto in_order = longest_increasing(order);
    std::vector<bool> keeps(order.size(), false);
    for (std::size_t i : in_order) keeps[i] = true;
    for (std::size_t i = 0; i < order.size(); ++i) {
      if (keeps[i]) continue;
      const ManifestRecord& want = listed[order[i]];
      add_record(FindingKind::reordered, name, want.seq, matched[i]->offset, want.id,
                 "sealed at offset " + std::to_string(want.offset) + ", found at offset " +
                     std::to_string(matched[i]->offset));
    }

    for (const auto& u : unreadable) {
      auto at = std::find_if(listed.begin(), listed.end(), [&](const auto& r) { return r.offset == u.from; });
      std::size_t idx = static_cast<std::size_t>(at - listed.begin());
      bool to_end = u.to == bytes.size();
      if (to_end && bytes.size() < m.file_size) {
        // The file was cut: one finding for everything lost with the tail.
        std::uint64_t first = 0, last = 0, lost = 0;
        for (std::size_t i = 0; i < listed.size(); ++i) {
          if (accounted[i]) continue;
          if (lost++ == 0) first = listed[i].seq;
          last = listed[i].seq;
          accounted[i] = true;
        }
        add(FindingKind::truncated, name,
            "segment ends at " + std::to_string(bytes.size()) + " of " + std::to_string(m.file_size) + " bytes (" +
                u.why + ")" +
                (lost == 0     ? std::string()
                 : first == last ? "; record " + std::to_string(first) + " lost"
                                 : "; records " + std::to_string(first) + " to " + std::to_string(last) + " lost"))
            .offset = u.from;
      } else if (at != listed.end() && !accounted[idx]) {
        accounted[idx] = true;
        add_record(FindingKind::modified, name, at->seq, u.from, at->id, "gzip member unreadable: " + u.why);
      } else {
        add(FindingKind::inserted, name,
            std::to_string(u.to - u.from) + " bytes that are no record at offset " + std::to_string(u.from) + ": " +
                u.why)
            .offset = u.from;
      }
    }
    for (std::size_t i = 0; i < listed.size(); ++i) {
      if (!accounted[i])
        add_record(FindingKind::deleted, name, listed[i].seq, listed[i].offset, listed[i].id,
                   listed[i].type + " record missing from the segment");
    }
  }

  static std::string tombstone_detail(const Tombstone& t) {
    return "deleted on " + t.deleted + " (" + t.reason + "); sealed " + t.sealed + ", " + std::to_string(t.records) +
           " records, chain head " + t.chain_head;
  }

  // Whether every segment between prev and `seq` has a tombstone that
  // continues prev's chain; if so notes them and moves prev to the last one.
  bool pruned_gap(const std::string& writer, std::uint64_t seq, Link& prev) {
    std::vector<const Tombstone*> gap;
    for (std::uint64_t s = prev.seq + 1; s < seq; ++s) {
      auto it = pruned_.find({writer, s});
      if (it == pruned_.end()) return false;
      gap.push_back(&it->second);
    }
    std::optional<Digest> head = prev.head;
    for (const Tombstone* t : gap) {
      add(FindingKind::pruned, t->segment, tombstone_detail(*t));
      if (head && parse_sha256_field(t->chain_start) != head)
        add(FindingKind::chain_broken, t->segment,
            "tombstone's chain start does not continue " +
                (prev.name.empty() ? std::string("the writer's start") : prev.name));
      head = parse_sha256_field(t->chain_head);
      prev.name = t->segment;
    }
    prev.seq = seq - 1;
    prev.head = head;
    return true;
  }

  // Source segments present in this directory: each exported record must be
  // the record their signed manifests list (an export verified on its own
  // relies on its own signature; an auditor can run this against the archive).
  void cross_check_sources(const ExportManifest& em, const std::string& name) {
    for (const auto& src : em.sources) {
      struct stat st {};
      if (::stat(path(src.segment + std::string(kManifestSuffix)).c_str(), &st) != 0) continue;
      auto m = trusted_manifest(src.segment, false);
      auto text = read_text_file(path(src.segment + std::string(kManifestSuffix)));
      if (!m || !text || to_hex(sha256(*text)) != src.manifest_sha256) {
        add(FindingKind::bad_manifest, name, "source " + src.segment + ": its manifest is not the one the export names");
        continue;
      }
      std::unordered_map<std::string, const ManifestRecord*> by_id;
      for (const auto& r : m->records) by_id.emplace(r.id, &r);
      for (const auto& e : em.records) {
        if (e.source != src.segment) continue;
        auto it = by_id.find(e.record.id);
        if (it == by_id.end() || it->second->seq != e.record.seq || it->second->digest != e.record.digest ||
            it->second->chain != e.record.chain)
          add_record(FindingKind::bad_manifest, name, e.record.seq, e.record.offset, e.record.id,
                     "does not match the sealed record of " + src.segment);
      }
    }
  }

  std::string dir_;
  EVP_PKEY* key_;
  Report report_;
  std::map<std::pair<std::string, std::uint64_t>, Tombstone> pruned_;
};

}  // namespace

std::string_view to_string(FindingKind k) {
  switch (k) {
    case FindingKind::modified: return "modified";
    case FindingKind::deleted: return "deleted";
    case FindingKind::inserted: return "inserted";
    case FindingKind::reordered: return "reordered";
    case FindingKind::truncated: return "truncated";
    case FindingKind::bad_signature: return "bad_signature";
    case FindingKind::bad_manifest: return "bad_manifest";
    case FindingKind::missing_manifest: return "missing_manifest";
    case FindingKind::segment_deleted: return "segment_deleted";
    case FindingKind::chain_broken: return "chain_broken";
    case FindingKind::unsealed: return "unsealed";
    case FindingKind::pruned: return "pruned";
  }
  return "unknown";
}

std::string format_finding(const Finding& f) {
  std::string out(to_string(f.kind));
  out += ' ';
  out += f.segment;
  if (f.seq) out += " record " + std::to_string(*f.seq);
  if (f.offset) out += " @" + std::to_string(*f.offset);
  if (!f.record_id.empty()) out += " " + f.record_id;
  out += ": " + f.detail;
  return out;
}

std::size_t Report::problems() const {
  return static_cast<std::size_t>(
      std::count_if(findings.begin(), findings.end(), [](const Finding& f) { return f.problem(); }));
}

std::optional<Manifest> load_trusted_manifest(const std::string& dir, const std::string& segment, EVP_PKEY* key,
                                              FindingKind* kind, std::string* why) {
  std::string base = dir + "/" + segment;
  auto text = read_text_file(base + std::string(kManifestSuffix));
  auto sig = read_text_file(base + std::string(kSignatureSuffix));
  auto complain = [&](FindingKind k, std::string detail) {
    if (kind) *kind = k;
    if (why) *why = std::move(detail);
    return std::optional<Manifest>();
  };
  if (!text) return complain(FindingKind::missing_manifest, "manifest unreadable");
  if (!sig) return complain(FindingKind::bad_signature, "signature file missing");
  std::string reason;
  auto m = parse_manifest(*text, &reason);
  if (!verify_base64(key, *text, *sig)) {
    std::string detail = "manifest signature does not verify: manifest or signature modified";
    std::string fingerprint = key_fingerprint(key);
    if (m && m->key_fingerprint != fingerprint)
      detail += " (manifest names key " + m->key_fingerprint + ", verifying with " + fingerprint + ")";
    return complain(FindingKind::bad_signature, detail);
  }
  if (!m) return complain(FindingKind::bad_manifest, reason);
  // Format /2: the signed manifest seals the records file by its SHA-256.
  if (!load_records(dir, *m, &reason)) return complain(FindingKind::bad_manifest, reason);
  return m;
}

std::optional<Report> verify_archive(const std::string& path, EVP_PKEY* public_key, std::string* error) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) {
    fs::path p(path);
    Verifier v(p.has_parent_path() ? p.parent_path().string() : ".", public_key);
    v.export_file(p.filename().string());
    return v.take();
  }
  const std::string& dir = path;
  std::map<std::string, std::map<std::uint64_t, SegmentFiles>> writers;
  std::vector<std::string> exports;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string n = it->path().filename().string();
    std::string_view base = n;
    bool is_manifest = base.ends_with(kManifestSuffix);
    if (is_manifest) base.remove_suffix(kManifestSuffix.size());
    auto seg = parse_segment_name(base);
    if (!seg) {
      if (!is_manifest && base.ends_with(kSealedSuffix)) exports.push_back(n);
      continue;
    }
    SegmentFiles& files = writers[seg->writer][seg->seq];
    files.name = seg->sealed_name;
    if (is_manifest) files.manifest = true;
    else if (seg->open) files.open_file = true;
    else files.sealed_file = true;
  }
  if (ec) {
    if (error) *error = dir + ": " + ec.message();
    return std::nullopt;
  }
  Verifier v(dir, public_key);
  std::string why;
  if (auto tombstones = load_tombstones(dir, public_key, &why)) v.set_tombstones(tombstones->entries);
  else v.add_problem(FindingKind::bad_signature, std::string(kPrunedFile), why);
  for (const auto& [writer, segments] : writers) v.writer(writer, segments);
  std::sort(exports.begin(), exports.end());
  for (const auto& name : exports) v.export_file(name);
  return v.take();
}

}  // namespace sightline::archive
