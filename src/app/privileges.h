// Running as root only as long as needed (issue 11): listeners are bound
// and keys read as root, then the process becomes an unprivileged user.
#pragma once

#include <string>

namespace sightline::app {

// Switches every thread to `user` (uid, its primary group unless `group` is
// given, and its supplementary groups), sets no_new_privs, and keeps
// CAP_NET_ADMIN in the calling thread (and so in threads it starts later)
// when `keep_net_admin`: TPROXY's spoof_source sets IP_TRANSPARENT on origin
// sockets. Started as that user already: nothing to do. False with the
// reason (unknown user, not root, a step refused).
bool drop_privileges(const std::string& user, const std::string& group, bool keep_net_admin,
                     std::string* error);

}  // namespace sightline::app
