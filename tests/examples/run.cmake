# Runs a numbered example on the embedded model and checks what it prints: it must exit 0 and its
# output must match EXPECT, a regular expression written from the tasks' own answers
# ("a:47+8-5+9=" -> "55,50,59#59", "r:bdaec=" -> "ceadb"), not from an earlier run's output.
# Arguments: EXAMPLE (the program), MODEL (its folder), EXPECT.
execute_process(COMMAND ${EXAMPLE} ${MODEL} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${EXAMPLE} exited ${rc}")
endif()
if(NOT out MATCHES "${EXPECT}")
  message(FATAL_ERROR "${EXAMPLE}: the output does not match ${EXPECT}")
endif()
