#include "app/privileges.h"

#include <grp.h>
#include <pwd.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

namespace sightline::app {
namespace {

bool fail(std::string* error, std::string why) {
  if (error) *error = std::move(why);
  return false;
}

std::string sys_reason(const char* step) { return std::string(step) + ": " + std::strerror(errno); }

struct CapFree {
  void operator()(cap_t c) const { cap_free(c); }
};
using CapPtr = std::unique_ptr<std::remove_pointer_t<cap_t>, CapFree>;

}  // namespace

bool drop_privileges(const std::string& user, const std::string& group, bool keep_net_admin,
                     std::string* error) {
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (getpwnam_r(user.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || !found)
    return fail(error, "process.user: no user '" + user + "'");
  uid_t uid = pw.pw_uid;
  gid_t gid = pw.pw_gid;
  std::string name = pw.pw_name;
  if (!group.empty()) {
    std::vector<char> gbuf(16384);
    struct group gr {};
    struct group* gfound = nullptr;
    if (getgrnam_r(group.c_str(), &gr, gbuf.data(), gbuf.size(), &gfound) != 0 || !gfound)
      return fail(error, "process.group: no group '" + group + "'");
    gid = gr.gr_gid;
  }
  if (geteuid() != 0) {
    if (geteuid() == uid && getegid() == gid) return true;  // started as that user (systemd User=)
    return fail(error, "process.user: switching to '" + user + "' needs the proxy started as root");
  }
  if (uid == 0) return fail(error, "process.user: '" + user + "' is root; name an unprivileged user");

  // Capabilities survive the uid change only with KEEPCAPS (this thread).
  if (keep_net_admin && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) return fail(error, sys_reason("PR_SET_KEEPCAPS"));
  // glibc applies these to every thread of the process.
  if (initgroups(name.c_str(), gid) != 0) return fail(error, sys_reason("initgroups"));
  if (setresgid(gid, gid, gid) != 0) return fail(error, sys_reason("setresgid"));
  if (setresuid(uid, uid, uid) != 0) return fail(error, sys_reason("setresuid"));
  // No way back: a saved root id would allow it.
  if (setuid(0) == 0) return fail(error, "privileges: root could be regained after the switch");

  CapPtr caps(cap_init());
  if (!caps) return fail(error, sys_reason("cap_init"));
  if (keep_net_admin) {
    cap_value_t keep[] = {CAP_NET_ADMIN};
    if (cap_set_flag(caps.get(), CAP_PERMITTED, 1, keep, CAP_SET) != 0 ||
        cap_set_flag(caps.get(), CAP_EFFECTIVE, 1, keep, CAP_SET) != 0)
      return fail(error, sys_reason("cap_set_flag"));
  }
  // Also clears what KEEPCAPS kept beyond CAP_NET_ADMIN.
  if (cap_set_proc(caps.get()) != 0) return fail(error, sys_reason("cap_set_proc"));
  if (keep_net_admin) prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
  // The uid change reset it; keys in memory stay out of core files and
  // /proc/PID/mem of other processes of the same user.
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return fail(error, sys_reason("PR_SET_NO_NEW_PRIVS"));
  return true;
}

}  // namespace sightline::app
