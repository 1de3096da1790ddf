from nas_proxy.launch import main

main()
