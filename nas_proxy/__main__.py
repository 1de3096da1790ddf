from nas_proxy.cli import run

run()
