# The fleet: CAP_HOSTS is "addr:port addr:port ...", CAP_USER the login,
# CAP_KEY the private key and CAP_KNOWN_HOSTS the known_hosts file (host
# keys are checked).
ENV.fetch("CAP_HOSTS").split.each do |h|
  server h, user: ENV.fetch("CAP_USER"), roles: %w[app]
end

set :ssh_options, {
  keys: [ENV.fetch("CAP_KEY")],
  keys_only: true,
  user_known_hosts_file: ENV.fetch("CAP_KNOWN_HOSTS"),
  global_known_hosts_file: "/dev/null",
  verify_host_key: :always,
  auth_methods: %w[publickey],
}
