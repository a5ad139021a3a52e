// sightline command line. CLI11 parses it (a Debian package, and its
// subcommand support fits `run` now and `policy`/`archive` later).
#include "app/archive_cli.h"
#include "app/archive_ship_cli.h"
#include "app/config.h"
#include "app/server.h"
#include "archive/bucket.h"
#include "archive/keys.h"
#include "archive/s3.h"
#include "archive/verify.h"
#include "archive/verify_s3.h"
#include "core/log.h"
#include "icap/icap_client.h"
#include "identity/passwd.h"
#include "net/address.h"
#include "policy/policy.h"
#include "sightline_build.h"

#include <CLI/CLI.hpp>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <tuple>
#include <sys/prctl.h>

namespace {

int policy_check(const std::vector<std::string>& files) {
  int rc = 0;
  for (const auto& f : files) {
    sightline::policy::PolicyError err;
    auto pol = sightline::policy::Policy::load({f}, err);
    if (!pol) {
      std::cerr << err.message << "\n";
      rc = 1;
      continue;
    }
    std::cout << f << ": ok, " << pol->rules().size() << " rules, " << pol->name_count()
              << " names, default " << sightline::policy::to_string(pol->default_action()) << "\n";
  }
  return rc;
}

int policy_explain(const std::vector<std::string>& files, const std::string& sni,
                   const std::string& client, int port, const std::string& dst) {
  using namespace sightline::policy;
  PolicyError err;
  auto pol = Policy::load(files, err);
  if (!pol) {
    std::cerr << err.message << "\n";
    return 2;
  }
  Query q;
  auto name = sni.empty() ? std::optional<std::string>(std::string()) : normalize_name(sni);
  if (!name) {
    std::cerr << "invalid --sni " << sni << "\n";
    return 2;
  }
  q.server_name = *name;
  q.dst_port = static_cast<std::uint16_t>(port);
  if (!client.empty() && !(q.client_ip = IpAddress::parse(client))) {
    std::cerr << "invalid --client " << client << "\n";
    return 2;
  }
  if (!dst.empty() && !(q.dst_ip = IpAddress::parse(dst))) {
    std::cerr << "invalid --dst " << dst << "\n";
    return 2;
  }
  Decision d = pol->decide(q);
  if (d.rule) {
    std::cout << to_string(d.action) << "  rule '" << d.rule->name << "' at " << d.rule->file << ":"
              << d.rule->line << "\n";
  } else {
    std::cout << to_string(d.action) << "  default (no rule matched)\n";
  }
  return 0;
}

// `sightline archive keygen FILE` and `sightline archive verify DIR --key FILE`.
// Exit codes: 0 done / intact, 1 problems found, 2 usage or I/O errors.
struct ArchiveFlags {
  std::string key_file, dir, verify_key;
  // verify s3://bucket/prefix
  std::string endpoint, region = "us-east-1", credentials_file, ca_file, work_dir;
  bool virtual_host = false;
};

// `sightline archive verify s3://bucket/prefix`: downloads into a temporary
// directory (or --work-dir, kept) and checks it like a local archive.
int verify_s3_command(const ArchiveFlags& f, EVP_PKEY* key) {
  namespace archive = sightline::archive;
  namespace fs = std::filesystem;
  std::string why;
  auto co = archive::client_for_s3_url(f.dir, f.endpoint, f.region, f.credentials_file, f.ca_file, f.virtual_host,
                                       &why);
  if (!co) {
    std::cerr << "sightline: " << f.dir << ": " << why << "\n";
    return 2;
  }
  archive::s3::Client client(*co);
  std::string work = f.work_dir;
  std::error_code ec;
  if (!work.empty() && fs::exists(work, ec) && !fs::is_empty(work, ec)) {
    std::cerr << "sightline: --work-dir " << work << " is not empty: stale files would be verified too\n";
    return 2;
  }
  if (work.empty()) {
    std::string tmpl = (fs::temp_directory_path() / "sightline-verify-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) {
      std::cerr << "sightline: mkdtemp: " << std::strerror(errno) << "\n";
      return 2;
    }
    work = tmpl;
  }
  auto report = archive::verify_s3(client, key, work, &why);
  if (f.work_dir.empty()) fs::remove_all(work, ec);
  if (!report) {
    std::cerr << "sightline: " << why << "\n";
    return 2;
  }
  for (const auto& finding : report->findings) std::cout << archive::format_finding(finding) << "\n";
  std::cout << report->nodes.size() << " nodes, " << report->objects << " object versions, " << report->segments
            << " segments, " << report->records << " records, ";
  if (report->intact()) std::cout << "intact\n";
  else std::cout << report->problems() << " problems\n";
  return report->intact() ? 0 : 1;
}

int archive_command(const ArchiveFlags& f, bool keygen) {
  namespace archive = sightline::archive;
  std::string err;
  if (keygen) {
    if (f.key_file.empty()) {
      std::cerr << "usage: sightline archive keygen FILE\n";
      return 2;
    }
    if (!archive::keygen(f.key_file, &err)) {
      std::cerr << "sightline: " << err << "\n";
      return 2;
    }
    std::cout << "wrote " << f.key_file << " (private, 0600) and " << f.key_file << ".pub\n";
    return 0;
  }
  if (f.dir.empty() || f.verify_key.empty()) {
    std::cerr << "usage: sightline archive verify DIR|EXPORT.warc.gz --key FILE\n";
    return 2;
  }
  auto key = archive::load_verify_key(f.verify_key, &err);
  if (key && f.dir.rfind("s3://", 0) == 0) return verify_s3_command(f, key.get());
  auto report = key ? archive::verify_archive(f.dir, key.get(), &err) : std::nullopt;
  if (!report) {
    std::cerr << "sightline: " << err << "\n";
    return 2;
  }
  for (const auto& finding : report->findings) std::cout << archive::format_finding(finding) << "\n";
  std::cout << report->segments << " segments, " << report->records << " records, ";
  if (report->intact()) std::cout << "intact\n";
  else std::cout << report->problems() << " problems\n";
  return report->intact() ? 0 : 1;
}

// `sightline run`'s command line: each flag overrides its config key.
struct RunFlags {
  std::string config_path, ca_cert, ca_key, upstream_ca;
  std::vector<std::string> listen, transparent, tproxy, policies;
  int workers = -1;
  std::optional<std::string> admin_listen;
  std::string pcap_dir, pcap_over_ip, keylog_client, keylog_upstream, events_socket;
  std::string icap_reqmod, icap_respmod, icap_fail;
  std::string archive_dir, archive_key, archive_sync, archive_s3;
  bool archive_all = false;
  std::string credentials, user_map;
};

int do_run(const RunFlags& f) {
  using namespace sightline;
  app::ConfigError err;
  std::optional<app::Config> cfg;
  if (!f.config_path.empty()) {
    cfg = app::load_config_file(f.config_path, err);
  } else {
    cfg = app::default_config();
  }
  if (!cfg) {
    std::cerr << "sightline: " << err.message << "\n";
    return 2;
  }
  if ((!f.listen.empty() || !f.transparent.empty() || !f.tproxy.empty()) &&
      !app::set_listen_addresses(*cfg, f.listen, f.transparent, f.tproxy, err)) {
    std::cerr << "sightline: " << err.message << "\n";
    return 2;
  }
  if (!f.ca_cert.empty()) cfg->ca_cert = f.ca_cert;
  if (!f.ca_key.empty()) cfg->ca_key = f.ca_key;
  if (!f.upstream_ca.empty()) cfg->upstream_ca_file = f.upstream_ca;
  if (f.workers >= 0) cfg->workers = static_cast<unsigned>(f.workers);
  if (!f.policies.empty()) {
    cfg->policy_files = f.policies;
    cfg->policy_files_configured = true;
  }
  if (f.admin_listen) {
    const std::string& a = *f.admin_listen;
    if (!a.empty() && a != "off" && !sightline::net::parse_listen_address(a)) {
      std::cerr << "sightline: --admin-listen " << a << ": expected IP:PORT or off\n";
      return 2;
    }
    cfg->admin_listen = a == "off" ? "" : a;
  }
  if (!f.pcap_dir.empty()) cfg->pcap.dir = f.pcap_dir;
  if (!f.pcap_over_ip.empty()) {
    if (!sightline::net::parse_listen_address(f.pcap_over_ip)) {
      std::cerr << "sightline: --pcap-over-ip " << f.pcap_over_ip << ": expected IP:PORT\n";
      return 2;
    }
    cfg->pcap.over_ip = f.pcap_over_ip;
  }
  if (!f.events_socket.empty()) cfg->events.socket = f.events_socket;
  if (!f.keylog_client.empty()) cfg->keylog.client_file = f.keylog_client;
  if (!f.keylog_upstream.empty()) cfg->keylog.upstream_file = f.keylog_upstream;
  for (auto [flag, value, key] : {std::tuple{"--icap-reqmod", &f.icap_reqmod, &cfg->icap.reqmod},
                                  std::tuple{"--icap-respmod", &f.icap_respmod, &cfg->icap.respmod}}) {
    if (value->empty()) continue;
    std::string why;
    if (!icap::parse_service_url(*value, &why)) {
      std::cerr << "sightline: " << flag << " " << *value << ": " << why << "\n";
      return 2;
    }
    *key = *value;
  }
  if (!f.icap_fail.empty()) cfg->icap.fail = f.icap_fail;
  if (!f.archive_dir.empty()) cfg->archive.dir = f.archive_dir;
  if (!f.archive_key.empty()) cfg->archive.key = f.archive_key;
  if (!f.archive_sync.empty()) cfg->archive.sync = f.archive_sync;
  if (!f.archive_s3.empty()) {
    std::string why;
    if (!archive::s3::parse_target(f.archive_s3, cfg->archive.s3.virtual_host, &why)) {
      std::cerr << "sightline: --archive-s3 " << f.archive_s3 << ": " << why << "\n";
      return 2;
    }
    cfg->archive.s3.url = f.archive_s3;
  }
  if (f.archive_all) cfg->archive.all = true;
  if (!f.credentials.empty()) cfg->identity.credentials = f.credentials;
  if (!f.user_map.empty()) cfg->identity.user_map = f.user_map;
  if (!app::validate(*cfg, err)) {
    std::cerr << "sightline: " << err.message << "\n";
    return 2;
  }
  log::Options lo;
  lo.file = cfg->log_file;
  lo.level = cfg->log_level == "debug"  ? log::Level::debug
             : cfg->log_level == "warn" ? log::Level::warn
             : cfg->log_level == "error" ? log::Level::error
                                         : log::Level::info;
  std::string why;
  if (!log::start(lo, &why)) {
    std::cerr << "sightline: " << why << "\n";
    return 2;
  }
  int rc = app::run_server(*cfg);
  log::stop();
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  // Keys in memory must not end up in a core file.
  prctl(PR_SET_DUMPABLE, 0);
  std::signal(SIGPIPE, SIG_IGN);

  CLI::App cli{"sightline: TLS-intercepting egress proxy"};
  cli.require_subcommand(1);
  cli.set_version_flag("--version", SIGHTLINE_VERSION);

  RunFlags rf;
  auto* run = cli.add_subcommand("run", "run the proxy");
  run->add_option("-c,--config", rf.config_path, "TOML configuration file")->check(CLI::ExistingFile);
  run->add_option("--listen", rf.listen, "explicit-proxy listener ADDR:PORT (repeatable; replaces [[listener]])");
  run->add_option("--transparent", rf.transparent,
                  "transparent (REDIRECT/DNAT) listener ADDR:PORT (repeatable; replaces [[listener]])");
  run->add_option("--tproxy", rf.tproxy, "TPROXY listener ADDR:PORT (repeatable; replaces [[listener]])");
  run->add_option("--ca-cert", rf.ca_cert, "issuing CA certificate (PEM, chain after it)");
  run->add_option("--ca-key", rf.ca_key, "issuing CA private key (PEM, mode 0600)");
  run->add_option("--upstream-ca", rf.upstream_ca, "trust store for origin certificates (PEM)");
  run->add_option("--workers", rf.workers, "worker threads (0 = one per core)")->check(CLI::Range(0, 256));
  run->add_option("--admin-listen", rf.admin_listen,
                  "admin listener ADDR:PORT for /metrics, /healthz, /readyz, /status (off: none)");
  run->add_option("--policy", rf.policies, "policy file (repeatable; replaces [policy] files)")
      ->check(CLI::ExistingFile);
  run->add_option("--pcap-dir", rf.pcap_dir, "write decrypted PCAP-NG of all inspected traffic here");
  run->add_option("--pcap-over-ip", rf.pcap_over_ip, "stream a live decrypted pcap to readers on ADDR:PORT");
  run->add_option("--events-socket", rf.events_socket,
                  "stream connection and exchange records as JSON lines to readers of this Unix socket");
  run->add_option("--keylog-client", rf.keylog_client,
                  "append client-leg TLS secrets here (NSS key log; diagnostics only)");
  run->add_option("--icap-reqmod", rf.icap_reqmod, "send requests to this ICAP service (icap://host:port/service)");
  run->add_option("--icap-respmod", rf.icap_respmod, "send responses to this ICAP service (icap://host:port/service)");
  run->add_option("--icap-fail", rf.icap_fail, "when ICAP fails: open (relay as is) or closed (error page)")
      ->check(CLI::IsMember({"open", "closed"}));
  run->add_option("--archive-dir", rf.archive_dir, "write the compliance archive (WARC) here");
  run->add_flag("--archive-all", rf.archive_all, "archive every inspected exchange, whatever the policy says");
  run->add_option("--archive-key", rf.archive_key, "Ed25519 archive signing key (sightline archive keygen)");
  run->add_option("--archive-sync", rf.archive_sync, "archive durability: record, interval or none")
      ->check(CLI::IsMember({"record", "interval", "none"}));
  run->add_option("--archive-s3", rf.archive_s3,
                  "ship sealed segments to S3 Object Lock: http(s)://host[:port]/bucket[/prefix]");
  run->add_option("--keylog-upstream", rf.keylog_upstream,
                  "append upstream-leg TLS secrets here (NSS key log; diagnostics only)");

  run->add_option("--credentials", rf.credentials,
                  "explicit listeners require Proxy-Authorization checked against this file (see `passwd`)")
      ->check(CLI::ExistingFile);
  run->add_option("--user-map", rf.user_map, "client CIDR to user map for listeners without passwords")
      ->check(CLI::ExistingFile);

  std::string pw_file, pw_user, pw_scheme = "scrypt";
  bool pw_stdin = false;
  auto* passwd = cli.add_subcommand("passwd", "set a user's password in a credentials file (0600, atomic)");
  passwd->add_option("file", pw_file, "credentials file (created if missing)")->required();
  passwd->add_option("user", pw_user, "user name")->required();
  passwd->add_flag("--password-stdin", pw_stdin, "read the password from the first line of stdin");
  passwd->add_option("--scheme", pw_scheme, "hash scheme")->check(CLI::IsMember({"scrypt", "pbkdf2-sha256"}));

  auto* pol = cli.add_subcommand("policy", "check policy files or explain a decision");
  pol->require_subcommand(1);
  std::vector<std::string> check_files;
  auto* check = pol->add_subcommand("check", "validate policy files; non-zero exit on errors");
  check->add_option("files", check_files, "policy files")->required();
  std::vector<std::string> explain_files;
  std::string ex_sni, ex_client, ex_dst, ex_config;
  int ex_port = 443;
  auto* explain = pol->add_subcommand("explain", "print the rule that decides a connection");
  explain->add_option("--sni", ex_sni, "server name (SNI or CONNECT host)");
  explain->add_option("--client", ex_client, "client IP address");
  explain->add_option("--port", ex_port, "destination port")->check(CLI::Range(0, 65535));
  explain->add_option("--dst", ex_dst, "destination IP address");
  explain->add_option("--policy", explain_files, "policy file (repeatable)");
  explain->add_option("-c,--config", ex_config, "take the policy files from this config");

  ArchiveFlags af;
  auto* arch = cli.add_subcommand("archive", "compliance archive: signing key, verification, search, export, retention");
  arch->require_subcommand(1);
  auto* arch_keygen = arch->add_subcommand("keygen", "make an Ed25519 signing key: FILE (0600) and FILE.pub");
  arch_keygen->add_option("file", af.key_file, "private key file to create");
  auto* arch_verify = arch->add_subcommand("verify", "check an archive directory; exit 0 only when intact");
  arch_verify->add_option("dir", af.dir, "archive directory, an export (FILE.warc.gz), or s3://bucket/prefix");
  arch_verify->add_option("--key", af.verify_key, "archive public key PEM (the private key works too)");
  arch_verify->add_option("--endpoint", af.endpoint,
                          "for s3://bucket/prefix: the store's URL (default https://s3.REGION.amazonaws.com)");
  arch_verify->add_option("--region", af.region, "for s3://: SigV4 region (default us-east-1)");
  arch_verify->add_option("--credentials-file", af.credentials_file,
                          "for s3://: access key and secret (default: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)");
  arch_verify->add_option("--ca-file", af.ca_file, "for s3://: CA bundle of an https endpoint");
  arch_verify->add_flag("--virtual-host", af.virtual_host, "for s3://: bucket in the host name");
  arch_verify->add_option("--work-dir", af.work_dir, "for s3://: download here and keep it (default: a temporary directory)");

  sightline::app::ArchiveRetrievalCli archive_retrieval(arch);
  sightline::app::ArchiveShipCli archive_ship(arch);

  auto* version = cli.add_subcommand("version", "print the version");

  CLI11_PARSE(cli, argc, argv);
  if (version->parsed()) {
    std::cout << "sightline " << SIGHTLINE_VERSION << "\n";
    return 0;
  }
  if (check->parsed()) return policy_check(check_files);
  if (passwd->parsed()) return sightline::identity::passwd_command(pw_file, pw_user, pw_stdin, pw_scheme);
  if (auto rc = archive_retrieval.run()) return *rc;
  if (auto rc = archive_ship.run()) return *rc;
  if (arch->parsed()) return archive_command(af, arch_keygen->parsed());
  if (explain->parsed()) {
    if (explain_files.empty() && !ex_config.empty()) {
      sightline::app::ConfigError err;
      auto cfg = sightline::app::load_config_file(ex_config, err);
      if (!cfg) {
        std::cerr << err.message << "\n";
        return 2;
      }
      explain_files = cfg->policy_files;
    }
    if (explain_files.empty()) explain_files.push_back("policies/default.toml");
    return policy_explain(explain_files, ex_sni, ex_client, ex_port, ex_dst);
  }
  return do_run(rf);
}
