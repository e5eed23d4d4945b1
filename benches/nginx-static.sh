# Sourced by the bench scripts: the static-file origin of the bulk
# downloads, nginx as a school's web server would serve files (one worker,
# sendfile, no access log).

# write_nginx_conf DIR ROOT ADDR... : writes DIR/nginx.conf serving ROOT on
# each ADDR (host:port); pid and error log go to DIR too.
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
