# Sourced by the bench scripts: the configs of the other servers they run,
# so every script measures the same Squid and the same nginx.

# write_nginx_conf DIR ROOT ADDR... : writes DIR/nginx.conf serving ROOT on
# each ADDR (host:port), as a school's web server would serve files (one
# worker, sendfile, no access log); pid and error log go to DIR too.
write_nginx_conf() {
  local dir=$1 root=$2 listen="" addr
  shift 2
  for addr in "$@"; do listen+="listen $addr; "; done
  cat >"$dir/nginx.conf" <<EOC
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  server { ${listen}root $root; }
}
EOC
}

# write_squid_conf DIR ADDR FD_LIMIT [RULES] : writes DIR/squid.conf, Squid
# as a school IT vendor would deploy it: forward proxy + CONNECT on ADDR
# (host:port), no disk cache (a proxy, not a cache, like komugate), access
# log on, names from DIR/hosts and a resolver on 127.0.0.1, loopback
# clients only. A missing DIR/hosts is written with localhost in it: with
# an empty one, Squid's CONNECTs to 127.0.0.1 cost five times the user CPU
# (measured with cpu-split.sh; presumably a name lookup nobody answers).
# RULES (lines: a URL rewriter, deny rules) go before the final allow/deny.
write_squid_conf() {
  local dir=$1 addr=$2 fd_limit=$3 rules=${4:-}
  [ -e "$dir/hosts" ] || echo "127.0.0.1 localhost" >"$dir/hosts"
  cat >"$dir/squid.conf" <<EOC
http_port $addr
workers 1
pid_filename $dir/squid.pid
cache_log $dir/cache.log
access_log stdio:$dir/access.log
coredump_dir $dir
cache deny all
cache_mem 64 MB
pinger_enable off
max_filedescriptors $fd_limit
shutdown_lifetime 1 seconds
hosts_file $dir/hosts
dns_nameservers 127.0.0.1
${rules}
acl loopback src 127.0.0.0/8
http_access allow loopback
http_access deny all
EOC
}
