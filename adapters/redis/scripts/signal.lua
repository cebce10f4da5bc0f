-- signal: apply the signals scripts on a cluster returned (they touch only their own slot).
-- KEYS[1] P:{g}:hints  KEYS[2] P:{g}:wake  KEYS[3] P:{g}:awake  KEYS[4] P:{g}:poke
-- ARGV[1] prefix  ARGV[2] wake ms (0: claim no drain)  then signal strings (lib.lua)
-- Returns 1 if the caller must start a drain (as push.lua).
local parts, left, any_ready = {}, {}, false
for i = 3, #ARGV do
  for token in string.gmatch(ARGV[i], '%S+') do
    if token == '1' then
      any_ready = true
    elseif string.sub(token, 1, 1) == 'l' then
      left[tonumber(string.sub(token, 2))] = true
    elseif token ~= '0' then
      parts[tonumber(string.sub(token, 2))] = true
    end
  end
end
apply_signal(ARGV[1], parts, left)
if any_ready and tonumber(ARGV[2]) > 0 then
  return claim_awake(ARGV[1], ARGV[2])
end
return 0
