#include "archive/verify_s3.h"

#include "archive/bucket.h"
#include "archive/format.h"
#include "archive/ship.h"

#include <algorithm>
#include <filesystem>
#include <map>

namespace sightline::archive {
namespace {

namespace fs = std::filesystem;

Finding finding(FindingKind kind, const std::string& segment, std::string detail) {
  Finding f{kind, segment, std::nullopt, std::nullopt, {}, std::move(detail)};
  return f;
}

}  // namespace

std::size_t S3Report::problems() const {
  std::size_t n = 0;
  for (const auto& f : findings) n += f.problem() ? 1 : 0;
  return n;
}

std::optional<S3Report> verify_s3(s3::Client& client, EVP_PKEY* public_key, const std::string& work_dir,
                                  std::string* error) {
  auto listing = list_bucket(client, error);
  if (!listing) return std::nullopt;
  S3Report rep;
  rep.objects = listing->versions;
  rep.findings = listing->findings;
  const auto by_node = listing->by_node();
  for (const auto& [key, o] : listing->objects) {
    if (o.versions.size() > 1) {
      std::string ids;
      for (const auto& v : o.versions) ids += (ids.empty() ? "" : ", ") + v.version_id;
      rep.findings.push_back(finding(FindingKind::modified, o.node + "/" + o.file,
                                     key + " has " + std::to_string(o.versions.size()) +
                                         " versions (newest first: " + ids +
                                         "): one was uploaded over the archived copy"));
    }
  }
  for (const auto& [node, objs] : by_node) {
    rep.nodes.push_back(node);
    const std::string dir = (fs::path(work_dir) / node).string();
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) {
      *error = "cannot create " + dir + ": " + ec.message();
      return std::nullopt;
    }
    // The first version of each key is the one the shipper uploaded.
    std::map<std::string, const BucketObject*> by_file;
    for (const BucketObject* o : objs) {
      if (auto [it, fresh] = by_file.emplace(o->file, o); !fresh) {
        rep.findings.push_back(finding(FindingKind::inserted, node + "/" + o->file,
                                       o->key + " repeats " + it->second->key + " under another date"));
        continue;
      }
      if (auto e = download_first(client, *o, dir)) {
        *error = *e;
        return std::nullopt;
      }
    }
    // The shipper uploads a segment's manifest last: segments after the
    // node's last manifest whose own manifest is not in the bucket are still
    // being shipped (or were cut off by a stop and will be again), not
    // tampering. A missing manifest before that is a problem, reported by
    // verify_archive below.
    std::uint64_t last_manifest_seq = 0;
    for (const auto& [file, o] : by_file)
      if (file.ends_with(kManifestSuffix))
        if (auto sn = parse_segment_name(file.substr(0, file.size() - kManifestSuffix.size())))
          last_manifest_seq = std::max(last_manifest_seq, sn->seq);
    for (const auto& [file, o] : by_file) {
      auto sn = parse_segment_name(file);
      if (!sn || sn->open || sn->seq <= last_manifest_seq || by_file.count(file + std::string(kManifestSuffix)))
        continue;
      for (const auto& [other, o2] : by_file)
        if (other.rfind(file, 0) == 0) fs::remove(fs::path(dir) / other, ec);
      rep.findings.push_back(finding(FindingKind::unsealed, node + "/" + file,
                                     "shipping not finished: its manifest is not in the bucket yet"));
    }
    auto report = verify_archive(dir, public_key, error);
    if (!report) return std::nullopt;
    for (auto f : report->findings) {
      f.segment = node + "/" + f.segment;
      rep.findings.push_back(std::move(f));
    }
    rep.segments += report->segments;
    rep.records += report->records;
    // What later manifests recorded of earlier uploads must still be there,
    // as the first version of its key, with the same bytes.
    for (const BucketObject* o : objs) {
      if (!o->file.ends_with(kManifestSuffix)) continue;
      const std::string segment = o->file.substr(0, o->file.size() - kManifestSuffix.size());
      FindingKind kind{};
      std::string why;
      auto m = load_trusted_manifest(dir, segment, public_key, &kind, &why);
      if (!m) continue;  // verify_archive reported it
      for (const auto& ref : m->shipped) {
        auto it = by_file.find(ref.file);
        const std::string where = node + "/" + ref.file;
        if (it == by_file.end() || it->second->key != ref.key) {
          rep.findings.push_back(finding(FindingKind::segment_deleted, where,
                                         ref.key + " (version " + ref.version_id + ", recorded in " + o->file +
                                             ") is not in the bucket"));
          continue;
        }
        const auto& vs = it->second->versions;
        bool present = false;
        for (const auto& v : vs) present = present || v.version_id == ref.version_id;
        if (!present) {
          rep.findings.push_back(finding(FindingKind::modified, where,
                                         "version " + ref.version_id + " recorded in " + o->file +
                                             " is gone; the bucket has " + vs.front().version_id));
        } else if (vs.back().version_id != ref.version_id) {
          rep.findings.push_back(finding(FindingKind::modified, where,
                                         "version " + ref.version_id + " recorded in " + o->file +
                                             " is not the first version of " + ref.key));
        } else if (file_sha256_hex((fs::path(dir) / ref.file).string()) != ref.sha256) {
          rep.findings.push_back(finding(FindingKind::modified, where,
                                         "bytes differ from the SHA-256 recorded in " + o->file));
        }
      }
    }
  }
  return rep;
}

}  // namespace sightline::archive
