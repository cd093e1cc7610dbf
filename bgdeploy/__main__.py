from bgdeploy.cli import main

main()
