# Everything host-specific comes from the environment the Go benchmark sets:
# CAP_REPO (git repository), CAP_DEPLOY_TO, CAP_HELLO (the example app's
# binary), CAP_PORT (its port), CAP_LOG (Capistrano's own log file).
lock "~> 3.17"

set :application, "hello"
set :repo_url, ENV.fetch("CAP_REPO")
set :branch, "main"
set :deploy_to, ENV.fetch("CAP_DEPLOY_TO")
set :linked_dirs, %w[log pids]
set :keep_releases, 5
set :format_options, log_file: ENV.fetch("CAP_LOG", "/dev/null")

namespace :deploy do
  # The build step drover runs as its prepare hook: put the app's binary
  # into the release.
  task :build do
    on roles(:app) do
      within release_path do
        execute :mkdir, "-p", "bin"
        execute :cp, ENV.fetch("CAP_HELLO"), "bin/hello"
      end
    end
  end
  after "deploy:updated", "deploy:build"

  # The usual restart with a pid file, on every host at once: stop the old
  # process (TERM, wait for it to exit), then start the new release.
  desc "Restart the app"
  task :restart do
    on roles(:app), in: :parallel do
      pid = shared_path.join("pids/hello.pid")
      # One line: SSHKit joins a heredoc's lines with "; ".
      execute %(if [ -f #{pid} ] && kill -0 "$(cat #{pid})" 2>/dev/null; then old=$(cat #{pid}); kill -TERM "$old"; ) +
              %(while kill -0 "$old" 2>/dev/null; do sleep 0.1; done; fi)
      execute "cd #{current_path} && (setsid nohup ./bin/hello --port #{ENV.fetch("CAP_PORT")} >>#{shared_path}/log/hello.log 2>&1 </dev/null & echo $! >#{pid})"
    end
  end
  after "deploy:publishing", "deploy:restart"
end
