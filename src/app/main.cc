// sightline command line. CLI11 parses it (a Debian package, and its
// subcommand support fits `run` now and `policy`/`archive` later).
#include "app/config.h"
#include "app/server.h"
#include "core/log.h"
#include "net/address.h"
#include "policy/policy.h"
#include "sightline_build.h"

#include <CLI/CLI.hpp>

#include <csignal>
#include <iostream>
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

struct ListenFlags {
  std::vector<std::string> transparent, tproxy;
};

int do_run(const std::string& config_path, const std::vector<std::string>& listen,
           const ListenFlags& lf,
           const std::string& ca_cert, const std::string& ca_key, const std::string& upstream_ca,
           int workers, const std::vector<std::string>& policies, const std::string* admin_listen) {
  using namespace sightline;
  app::ConfigError err;
  std::optional<app::Config> cfg;
  if (!config_path.empty()) {
    cfg = app::load_config_file(config_path, err);
  } else {
    cfg = app::default_config();
  }
  if (!cfg) {
    std::cerr << "sightline: " << err.message << "\n";
    return 2;
  }
  if ((!listen.empty() || !lf.transparent.empty() || !lf.tproxy.empty()) &&
      !app::set_listen_addresses(*cfg, listen, lf.transparent, lf.tproxy, err)) {
    std::cerr << "sightline: " << err.message << "\n";
    return 2;
  }
  if (!ca_cert.empty()) cfg->ca_cert = ca_cert;
  if (!ca_key.empty()) cfg->ca_key = ca_key;
  if (!upstream_ca.empty()) cfg->upstream_ca_file = upstream_ca;
  if (workers >= 0) cfg->workers = static_cast<unsigned>(workers);
  if (!policies.empty()) {
    cfg->policy_files = policies;
    cfg->policy_files_configured = true;
  }
  if (admin_listen) {
    if (!admin_listen->empty() && *admin_listen != "off" &&
        !sightline::net::parse_listen_address(*admin_listen)) {
      std::cerr << "sightline: --admin-listen " << *admin_listen << ": expected IP:PORT or off\n";
      return 2;
    }
    cfg->admin_listen = *admin_listen == "off" ? "" : *admin_listen;
  }
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

  std::string config_path, ca_cert, ca_key, upstream_ca;
  std::vector<std::string> listen;
  int workers = -1;
  auto* run = cli.add_subcommand("run", "run the proxy");
  run->add_option("-c,--config", config_path, "TOML configuration file")->check(CLI::ExistingFile);
  run->add_option("--listen", listen, "explicit-proxy listener ADDR:PORT (repeatable; replaces [[listener]])");
  ListenFlags lf;
  run->add_option("--transparent", lf.transparent,
                  "transparent (REDIRECT/DNAT) listener ADDR:PORT (repeatable; replaces [[listener]])");
  run->add_option("--tproxy", lf.tproxy, "TPROXY listener ADDR:PORT (repeatable; replaces [[listener]])");
  run->add_option("--ca-cert", ca_cert, "issuing CA certificate (PEM, chain after it)");
  run->add_option("--ca-key", ca_key, "issuing CA private key (PEM, mode 0600)");
  run->add_option("--upstream-ca", upstream_ca, "trust store for origin certificates (PEM)");
  run->add_option("--workers", workers, "worker threads (0 = one per core)")->check(CLI::Range(0, 256));
  std::string admin_listen;
  auto* admin_opt = run->add_option("--admin-listen", admin_listen,
                                    "admin listener ADDR:PORT for /metrics, /healthz, /readyz, /status (off: none)");
  std::vector<std::string> policies;
  run->add_option("--policy", policies, "policy file (repeatable; replaces [policy] files)")
      ->check(CLI::ExistingFile);

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

  auto* version = cli.add_subcommand("version", "print the version");

  CLI11_PARSE(cli, argc, argv);
  if (version->parsed()) {
    std::cout << "sightline " << SIGHTLINE_VERSION << "\n";
    return 0;
  }
  if (check->parsed()) return policy_check(check_files);
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
  return do_run(config_path, listen, lf, ca_cert, ca_key, upstream_ca, workers, policies,
                admin_opt->count() ? &admin_listen : nullptr);
}
