#include "archive/verify_s3.h"

#include "archive/format.h"
#include "archive/ship.h"

#include <algorithm>
#include <filesystem>
#include <map>

namespace sightline::archive {
namespace {

namespace fs = std::filesystem;

struct Object {
  std::string node, file, key;
  std::vector<s3::ObjectVersion> versions;  // newest first, as S3 lists them
};

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
  const std::string prefix = client.target().prefix.empty() ? "" : client.target().prefix + "/";
  auto versions = client.list_versions(prefix, error);
  if (!versions) return std::nullopt;
  S3Report rep;
  rep.objects = versions->size();
  // <prefix><node>/<yyyy>/<mm>/<dd>/<file>
  std::map<std::string, Object> objects;  // by key
  for (auto& v : *versions) {
    std::string_view rest(v.key);
    rest.remove_prefix(prefix.size());
    std::vector<std::string_view> parts;
    for (std::size_t at = 0;;) {
      auto slash = rest.find('/', at);
      parts.push_back(rest.substr(at, slash == std::string_view::npos ? std::string_view::npos : slash - at));
      if (slash == std::string_view::npos) break;
      at = slash + 1;
    }
    auto digits = [](std::string_view d, std::size_t n) {
      return d.size() == n && std::all_of(d.begin(), d.end(), [](char c) { return c >= '0' && c <= '9'; });
    };
    // Names become paths under the work directory: nothing that could leave it.
    if (parts.size() != 5 || !valid_writer_id(parts[0]) || parts[0] == "." || parts[0] == ".." ||
        !digits(parts[1], 4) || !digits(parts[2], 2) || !digits(parts[3], 2) || parts[4].empty() ||
        parts[4].front() == '.') {
      rep.findings.push_back(finding(FindingKind::inserted, v.key, "object outside the archive's key layout"));
      continue;
    }
    if (v.delete_marker) {
      // Object Lock allows a delete marker over a locked version: plain
      // readers then get 404 although the version is still there.
      rep.findings.push_back(finding(FindingKind::deleted, std::string(parts[0]) + "/" + std::string(parts[4]),
                                     "a delete marker (version " + v.version_id + ") hides " + v.key));
      continue;
    }
    Object& o = objects[v.key];
    o.node = std::string(parts[0]);
    o.file = std::string(parts[4]);
    o.key = v.key;
    o.versions.push_back(std::move(v));
  }
  std::map<std::string, std::vector<const Object*>> by_node;
  for (const auto& [key, o] : objects) {
    by_node[o.node].push_back(&o);
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
    std::map<std::string, const Object*> by_file;
    for (const Object* o : objs) {
      if (auto [it, fresh] = by_file.emplace(o->file, o); !fresh) {
        rep.findings.push_back(finding(FindingKind::inserted, node + "/" + o->file,
                                       o->key + " repeats " + it->second->key + " under another date"));
        continue;
      }
      const auto& first = o->versions.back();
      auto r = client.get_to_file(o->key, first.version_id, (fs::path(dir) / o->file).string());
      if (!r.ok()) {
        *error = "GET " + o->key + " version " + first.version_id + ": " + r.error;
        return std::nullopt;
      }
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
    for (const Object* o : objs) {
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
